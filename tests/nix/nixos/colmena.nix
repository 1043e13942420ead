# What colmena adds to every node of the hive (zhaofengli/colmena at 5bf4ce6,
# src/nix/hive/options.nix `deploymentOptions` and src/nix/hive/modules.nix
# `keyServiceModule`): the deployment options and a `<attr>-key` path and service per key.
# colmena passes each node its name; targetHost defaults to it.
nodeName:
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  keyType =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        text = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        keyFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          apply = value: if value == null then null else toString value;
        };
        keyCommand = mkOption {
          type = types.nullOr (types.addCheck (types.listOf types.str) (l: builtins.length l > 0));
          default = null;
        };
        destDir = mkOption {
          type = types.path;
          default = "/run/keys";
        };
        path = mkOption {
          type = types.path;
          default = "${config.destDir}/${config.name}";
          internal = true;
        };
        user = mkOption {
          type = types.str;
          default = "root";
        };
        group = mkOption {
          type = types.str;
          default = "root";
        };
        permissions = mkOption {
          type = types.str;
          default = "0600";
        };
        uploadAt = mkOption {
          type = types.enum [ "pre-activation" "post-activation" ];
          default = "pre-activation";
        };
      };
    };
in
{
  options.deployment = {
    targetHost = mkOption {
      type = types.nullOr types.str;
      default = nodeName;
    };
    targetPort = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
    };
    targetUser = mkOption {
      type = types.nullOr types.str;
      default = "root";
    };
    allowLocalDeployment = mkOption {
      type = types.bool;
      default = false;
    };
    buildOnTarget = mkOption {
      type = types.bool;
      default = false;
    };
    tags = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    keys = mkOption {
      type = types.attrsOf (types.submodule keyType);
      default = { };
    };
    replaceUnknownProfiles = mkOption {
      type = types.bool;
      default = true;
    };
    privilegeEscalationCommand = mkOption {
      type = types.listOf types.str;
      default = [ "sudo" "-H" "--" ];
    };
    sshOptions = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };

  config = {
    # assertionModule: exactly one source per key.
    assertions = lib.mapAttrsToList (key: k: {
      assertion = builtins.length (builtins.filter (x: x != null) [ k.text k.keyCommand k.keyFile ]) == 1;
      message = "Exactly one of `deployment.keys.${key}.text`, `deployment.keys.${key}.keyCommand` and `deployment.keys.${key}.keyFile` must be set.";
    }) config.deployment.keys;

    # keyServiceModule: active exactly while the key file exists.
    systemd.paths = lib.mapAttrs' (
      name: k:
      lib.nameValuePair "${name}-key" {
        wantedBy = [ "paths.target" ];
        pathConfig.PathExists = k.path;
      }
    ) config.deployment.keys;
    systemd.services = lib.mapAttrs' (
      name: k:
      lib.nameValuePair "${name}-key" {
        enable = true;
        serviceConfig = {
          TimeoutStartSec = "infinity";
          Restart = "always";
          RestartSec = "100ms";
        };
        preStart = "wait for ${k.path}";
        script = "stay up while ${k.path} exists";
      }
    ) config.deployment.keys;
  };
}
