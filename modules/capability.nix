# The one function that turns a capability's name into its NixOS module:
#   services.cim.<name>.enable   -> a nixos-container `cim-<name>` running its agent
#   services.cim.<name>.settings -> the agent's JSON config, checked by `cim config check`
# A capability's own file is `import ./capability.nix { name = "..."; }` plus what is
# special about it.
{
  name,
  # Extra typed keys of the agent's settings, merged into the freeform submodule.
  settingsOptions ? { },
  # Extra secret files the agent reads (e.g. S3 credentials): attribute = description.
  extraSecretFiles ? { },
}:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  capabilities = import ./capabilities.nix;
  secrets = import ./secrets.nix { inherit lib; };
  top = config.services.cim;
  cfg = top.${name};
  fmt = pkgs.formats.json { };

  containerName = "cim-${name}";
  unitName = "cim-agent";
  index = capabilities.indexOf name;

  # Inside the container the agent's unit receives each secret as a systemd credential,
  # so a DynamicUser can read a root-only file. The config names only these paths.
  secretDir = "/run/cim/secrets";
  credentialPath = id: "/run/credentials/${unitName}.service/${id}";
  secretFiles = lib.filterAttrs (_: file: file != null) (
    { nkey = cfg.nkeySeedFile; } // cfg.secretFiles
  );

  natsUrl =
    let
      scheme = if top.nats.tls.client.certFile != null then "tls" else "nats";
    in
    "${scheme}://${cfg.hostAddress}:${toString top.nats.port}";

  configFile = fmt.generate "cim-${name}.json" cfg.settings;
  # A bad setting fails the build here, and `cim config check` names the field.
  checkedConfig = pkgs.runCommand "cim-${name}-config" { } ''
    ${cfg.package}/bin/cim config check ${configFile}
    ln -s ${configFile} $out
  '';
in
{
  options.services.cim.${name} = {
    enable = lib.mkEnableOption "the CIM `${name}` capability (${capabilities.description name}) in the container `${containerName}`";

    package = lib.mkOption {
      type = lib.types.package;
      default = top.package;
      defaultText = lib.literalExpression "config.services.cim.package";
      description = "The `cim` package the `${name}` agent runs.";
    };

    nkeyPublicKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
      description = ''
        Public nkey of the `${name}` agent: the line `cim keys new ${name}` prints. NATS gets
        a user with this key, allowed only what the `${name}` capability declares.
      '';
    };

    nkeySeedFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-${name}.nk";
      description = ''
        File (outside the Nix store) holding the agent's nkey seed, written by
        `cim keys new ${name}`. It is bind-mounted read-only into the container.
      '';
    };

    secretFiles = lib.mkOption {
      type = lib.types.attrsOf secrets.fileType;
      default = { };
      description = ''
        More secret files for the agent, by credential name. Inside the container each one
        is at `${credentialPath "NAME"}`; refer to that path in `settings`.
      ''
      + lib.concatStrings (lib.mapAttrsToList (id: what: "\n- `${id}`: ${what}") extraSecretFiles);
    };

    instances = lib.mkOption {
      type = lib.types.ints.between 1 64;
      default = 1;
      description = ''
        How many `${name}` agents run in the container, sharing the work
        (`cim agent run --instances`): each has its own name (`cim-${name}-N`), its own
        state under the unit's StateDirectory and its own metrics port (the configured one
        plus N - 1). Only capabilities whose work can be shared accept more than one.
      '';
    };

    hostAddress = lib.mkOption {
      type = lib.types.str;
      default = "10.233.${toString (index + 1)}.1";
      defaultText = lib.literalMD "`10.233.N.1`, N being the capability's place in the list";
      description = "Host side of the container's private link; the agent reaches NATS here.";
    };

    localAddress = lib.mkOption {
      type = lib.types.str;
      default = "10.233.${toString (index + 1)}.2";
      defaultText = lib.literalMD "`10.233.N.2`";
      description = "Container side of its private link.";
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = fmt.type;
        options = {
          capability = lib.mkOption {
            type = lib.types.enum [ name ];
            default = name;
            readOnly = true;
            description = "Which agent reads this file.";
          };
          nats = lib.mkOption {
            type = lib.types.submodule {
              freeformType = fmt.type;
              options.servers = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ natsUrl ];
                defaultText = lib.literalExpression ''[ "nats://''${hostAddress}:''${toString config.services.cim.nats.port}" ]'';
                description = "NATS servers the agent connects to: the host's, over the private link.";
              };
            };
            default = { };
            description = "How the agent connects to NATS. Secrets only as `*_file` paths.";
          };
        } // settingsOptions;
      };
      default = { };
      example = lib.literalExpression ''{ log_level = "debug"; }'';
      description = ''
        The `${name}` agent's configuration, rendered to JSON at
        `/etc/cim/${name}.json` in the container and validated at build time by
        `cim config check`: a bad setting fails the build and the error names the field.
        Secrets never go here, only paths to files (`*_file` keys).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.cim.${name}.settings = {
      name = lib.mkDefault containerName;
      nats = lib.mkMerge [
        (lib.mkIf (cfg.nkeySeedFile != null) { nkey_seed_file = credentialPath "nkey"; })
        (lib.mkIf (top.nats.tls.client.caFile != null) { tls_ca_file = "/etc/cim/tls/ca.pem"; })
      ];
      # Reachable from the host over the private link for Prometheus.
      metrics = {
        host = lib.mkDefault "0.0.0.0";
        port = lib.mkDefault 9464;
      };
      log_level = lib.mkDefault "info";
    };

    services.cim.nats.agentUsers = lib.mkIf (cfg.nkeyPublicKey != null) {
      ${name} = {
        nkey = cfg.nkeyPublicKey;
        permissions = capabilities.natsPermissions name;
      };
    };

    # The container starts once every file it bind-mounts is there, and restarts when one
    # is replaced (modules/keys.nix).
    services.cim.keys.required."container@${containerName}".files =
      map toString (lib.attrValues secretFiles) ++ lib.optional (top.nats.tls.client.caFile != null) (toString top.nats.tls.client.caFile);

    # The agent reaches the host's NATS over its link, and nothing else is opened.
    networking.firewall.interfaces."ve-${containerName}".allowedTCPPorts = [ top.nats.port ];

    containers.${containerName} = {
      autoStart = true;
      privateNetwork = true;
      inherit (cfg) hostAddress localAddress;
      bindMounts =
        lib.mapAttrs' (
          id: file:
          lib.nameValuePair "${secretDir}/${id}" {
            hostPath = toString file;
            isReadOnly = true;
          }
        ) secretFiles
        // lib.optionalAttrs (top.nats.tls.client.caFile != null) {
          "/etc/cim/tls/ca.pem" = {
            hostPath = toString top.nats.tls.client.caFile;
            isReadOnly = true;
          };
        };

      config = {
        system.stateVersion = config.system.stateVersion;
        # The host's package set, as nixos-containers.nix advises: otherwise every container
        # evaluates nixpkgs once more.
        nixpkgs.pkgs = lib.mkDefault pkgs;
        environment.etc."cim/${name}.json".source = checkedConfig;
        networking.firewall.allowedTCPPorts = lib.optionals (cfg.settings.metrics.port or null != null) (
          lib.range cfg.settings.metrics.port (cfg.settings.metrics.port + cfg.instances - 1)
        );
        environment.systemPackages = [ cfg.package ];

        systemd.services.${unitName} = {
          description = "CIM ${name} agent";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          restartTriggers = [ checkedConfig ];
          serviceConfig = {
            ExecStart =
              "${cfg.package}/bin/cim agent run ${name} --config /etc/cim/${name}.json"
              + lib.optionalString (cfg.instances > 1) " --instances ${toString cfg.instances}";
            # The agent keeps reconnecting on its own; a crash is restarted.
            Restart = "always";
            RestartSec = 2;
            LoadCredential = lib.mapAttrsToList (id: _: "${id}:${secretDir}/${id}") secretFiles;

            # Hardening: the agent only talks TCP to NATS and serves metrics.
            DynamicUser = true;
            StateDirectory = containerName;
            CapabilityBoundingSet = "";
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            NoNewPrivileges = true;
            PrivateDevices = true;
            PrivateTmp = true;
            PrivateUsers = true;
            ProcSubset = "pid";
            ProtectClock = true;
            ProtectControlGroups = true;
            ProtectHome = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectProc = "invisible";
            ProtectSystem = "strict";
            RemoveIPC = true;
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
            ];
            UMask = "0077";
          };
        };
      };
    };
  };
}
