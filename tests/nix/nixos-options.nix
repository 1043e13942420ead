# A STRICT declaration of the NixOS options the CIM modules set, with the names and types
# of nixpkgs 26.05, copied from nixpkgs' own module sources (cited per block). Nothing is
# freeform: a misspelled option, here or inside a container's config, fails evaluation as
# it would in a real system build.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  nats = config.services.nats;

  # nixos/lib/systemd-lib.nix: unitNameType.
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix: unitOption.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # nixos/lib/systemd-unit-options.nix: checkService (Type and Restart must be known values).
  checkService =
    attrs:
    (!(attrs ? Type) || builtins.elem attrs.Type [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ])
    && (!(attrs ? Restart) || builtins.elem attrs.Restart [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ]);

  unitList = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };

  # nixos/lib/systemd-unit-options.nix: sharedOptions, commonUnitOptions,
  # stage2CommonUnitOptions, serviceOptions, stage2ServiceOptions.
  serviceType = types.submodule {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = unitList;
      wants = unitList;
      upholds = unitList;
      after = unitList;
      before = unitList;
      bindsTo = unitList;
      partOf = unitList;
      conflicts = unitList;
      requisite = unitList;
      wantedBy = unitList;
      requiredBy = unitList;
      upheldBy = unitList;
      aliases = unitList;
      onFailure = unitList;
      onSuccess = unitList;
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.oneOf [ types.package types.str ]);
        default = [ ];
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      scriptArgs = mkOption {
        type = types.str;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      postStart = mkOption {
        type = types.lines;
        default = "";
      };
      preStop = mkOption {
        type = types.lines;
        default = "";
      };
      postStop = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };

  # nixos/modules/services/networking/firewall.nix: commonOptions.
  portOptions = {
    allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
    };
    allowedTCPPortRanges = mkOption {
      type = types.listOf (types.attrsOf types.port);
      default = [ ];
    };
    allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
    };
    allowedUDPPortRanges = mkOption {
      type = types.listOf (types.attrsOf types.port);
      default = [ ];
    };
  };

  # nixos/modules/virtualisation/nixos-containers.nix: bindMountOpts.
  bindMountType = types.submodule (
    { name, ... }:
    {
      options = {
        mountPoint = mkOption { type = types.str; };
        hostPath = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        isReadOnly = mkOption {
          type = types.bool;
          default = true;
        };
      };
      config.mountPoint = lib.mkDefault name;
    }
  );

  # nixos/modules/virtualisation/nixos-containers.nix: networkOptions.
  networkOptions = {
    hostBridge = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    forwardPorts = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            protocol = mkOption {
              type = types.str;
              default = "tcp";
            };
            hostPort = mkOption { type = types.int; };
            containerPort = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
          };
        }
      );
      default = [ ];
    };
    hostAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    hostAddress6 = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    localAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    localAddress6 = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
  };

  # The container's `config` is a whole NixOS system: nixpkgs evaluates it with
  # eval-config.nix; here it is evaluated against this same strict declaration, plus what
  # nixos-containers.nix sets in it (boot.isContainer, networking.hostName).
  containerConfigType =
    containerName:
    lib.mkOptionType {
      name = "Toplevel NixOS config";
      merge =
        loc: defs:
        (lib.evalModules {
          modules = [
            ./nixos-options.nix
            # What nixos-containers.nix puts into every container's config (extraConfig).
            {
              nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
              boot.isNspawnContainer = true;
              networking.hostName = lib.mkDefault containerName;
              networking.useDHCP = false;
              assertions = [
                {
                  # The 11-character limit applies only to host kernels up to 5.8; 26.05's are newer.
                  assertion = !lib.strings.hasInfix "_" containerName;
                  message = "Names containing underscores are not allowed in nixos-containers. Please rename the container '${containerName}'";
                }
              ];
            }
          ] ++ map (def: def.value) defs;
          # nixos-containers.nix passes `containers.<name>.specialArgs` and nothing else: the
          # container makes its own pkgs unless its config sets nixpkgs.pkgs. Here `pkgs` is
          # the stand-in, handed over as the module argument nixpkgs.nix would make.
          specialArgs = { inherit pkgs; };
        }).config;
    };

  containerType = types.submodule (
    { name, ... }:
    {
      options = {
        config = mkOption { type = containerConfigType name; };
        path = mkOption { type = types.path; };
        additionalCapabilities = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        nixpkgs = mkOption {
          type = types.path;
          default = pkgs.path;
        };
        specialArgs = mkOption {
          type = types.attrsOf types.unspecified;
          default = { };
        };
        ephemeral = mkOption {
          type = types.bool;
          default = false;
        };
        enableTun = mkOption {
          type = types.bool;
          default = false;
        };
        privateNetwork = mkOption {
          type = types.bool;
          default = false;
        };
        networkNamespace = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
        privateUsers = mkOption {
          type = types.either types.ints.u32 (types.enum [ "no" "identity" "pick" ]);
          default = "no";
        };
        interfaces = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        macvlans = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        extraVeths = mkOption {
          type = types.attrsOf (types.submodule { options = networkOptions; });
          default = { };
        };
        autoStart = mkOption {
          type = types.bool;
          default = false;
        };
        flake = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        # nixos-containers.nix @ 00ef614e (with localMacAddress, new in 26.05).
        copyResolvConf = mkOption {
          type = types.bool;
          default = true;
        };
        localMacAddress = mkOption {
          type = types.nullOr (types.strMatching "([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}");
          default = null;
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        timeoutStartSec = mkOption {
          type = types.str;
          default = "1min";
        };
        bindMounts = mkOption {
          type = types.attrsOf bindMountType;
          default = { };
        };
        allowedDevices = mkOption {
          type = types.listOf (
            types.submodule {
              options = {
                node = mkOption { type = types.str; };
                modifier = mkOption { type = types.str; };
              };
            }
          );
          default = [ ];
        };
        tmpfs = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        extraFlags = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      } // networkOptions;
    }
  );

  # nixos/modules/system/etc/etc.nix: environment.etc.
  etcType = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption { type = types.str; };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        source = mkOption { type = types.path; };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
        uid = mkOption {
          type = types.int;
          default = 0;
        };
        gid = mkOption {
          type = types.int;
          default = 0;
        };
        user = mkOption {
          type = types.str;
          default = "+${toString config.uid}";
        };
        group = mkOption {
          type = types.str;
          default = "+${toString config.gid}";
        };
      };
      config = {
        target = lib.mkDefault name;
        source = lib.mkIf (config.text != null) (pkgs.writeText "etc-${name}" config.text);
      };
    }
  );

  # nixos/modules/services/web-servers/nginx/location-options.nix: the options the CIM
  # modules set, and their neighbours a user is likely to set beside them.
  nginxLocationType = types.submodule {
    options = {
      proxyPass = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      proxyWebsockets = mkOption {
        type = types.bool;
        default = false;
      };
      basicAuthFile = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      return = mkOption {
        type = types.nullOr (types.oneOf [ types.str types.int ]);
        default = null;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      priority = mkOption {
        type = types.int;
        default = 1000;
      };
      recommendedProxySettings = mkOption {
        type = types.bool;
        default = config.services.nginx.recommendedProxySettings;
      };
    };
  };

  # nixos/modules/services/web-servers/nginx/vhost-options.nix: likewise.
  nginxVhostType = types.submodule {
    options = {
      serverName = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      serverAliases = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      enableACME = mkOption {
        type = types.bool;
        default = false;
      };
      useACMEHost = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      addSSL = mkOption {
        type = types.bool;
        default = false;
      };
      onlySSL = mkOption {
        type = types.bool;
        default = false;
      };
      forceSSL = mkOption {
        type = types.bool;
        default = false;
      };
      basicAuthFile = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      locations = mkOption {
        type = types.attrsOf nginxLocationType;
        default = { };
      };
    };
  };

  natsFormat = pkgs.formats.json { };
in
{
  imports = [
    ./nixos/networking.nix
    ./nixos/nixpkgs.nix
    ./nixos/garage.nix
    ./nixos/monitoring.nix
  ];

  options = {
    # nixos/modules/misc/assertions.nix.
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };

    # nixos/modules/misc/version.nix.
    system.stateVersion = mkOption {
      type = types.str;
      default = "26.05";
    };

    # nixos/modules/virtualisation/nixos-containers.nix.
    boot.isContainer = mkOption {
      type = types.bool;
      default = config.boot.isNspawnContainer;
    };
    boot.isNspawnContainer = mkOption {
      type = types.bool;
      default = false;
    };
    boot.enableContainers = mkOption {
      type = types.bool;
      default = config.containers != { };
    };
    containers = mkOption {
      type = types.attrsOf containerType;
      default = { };
    };

    # nixos/modules/tasks/network-interfaces.nix (hostName's exact regex is nixpkgs').
    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };

    # nixos/modules/services/networking/firewall.nix.
    networking.firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      trustedInterfaces = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      interfaces = mkOption {
        type = types.attrsOf (types.submodule [ { options = portOptions; } ]);
        default = { };
      };
    } // portOptions;

    # nixos/modules/config/system-path.nix.
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    # nixos/modules/system/etc/etc.nix.
    environment.etc = mkOption {
      type = types.attrsOf etcType;
      default = { };
    };

    # nixos/modules/system/boot/systemd.nix.
    systemd.services = mkOption {
      type = types.attrsOf serviceType;
      default = { };
    };
    # nixos/lib/systemd-types.nix: paths (stage2CommonUnitOptions + pathOptions).
    systemd.paths = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            enable = mkOption {
              type = types.bool;
              default = true;
            };
            description = mkOption {
              type = types.singleLineStr;
              default = "";
            };
            wantedBy = unitList;
            requiredBy = unitList;
            after = unitList;
            before = unitList;
            wants = unitList;
            unitConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
            pathConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
      default = { };
    };
    # nixos/modules/system/boot/systemd/tmpfiles.nix.
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/config/users-groups.nix (userOpts): the user options the modules set.
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              name = mkOption {
                type = types.str;
                default = name;
              };
              extraGroups = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
            };
          }
        )
      );
      default = { };
    };

    # nixos/modules/config/users-groups.nix: the group options the modules set.
    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              name = mkOption {
                type = types.str;
                default = name;
              };
              gid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
              members = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        )
      );
      default = { };
    };

    # nixos/modules/services/web-servers/minio.nix: the options services.cim.tier.minio sets.
    services.minio = {
      enable = lib.mkEnableOption "Minio Object Storage";
      listenAddress = mkOption {
        type = types.str;
        default = ":9000";
      };
      rootCredentialsFile = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      browser = mkOption {
        type = types.bool;
        default = true;
      };
    };

    # nixos/modules/services/web-servers/nginx/default.nix: the options services.cim.hub
    # and services.cim.ui set (ACME itself stays nixpkgs' security.acme, set by the user).
    services.nginx = {
      enable = lib.mkEnableOption "Nginx Web Server";
      user = mkOption {
        type = types.str;
        default = "nginx";
      };
      group = mkOption {
        type = types.str;
        default = "nginx";
      };
      recommendedTlsSettings = mkOption {
        type = types.bool;
        default = false;
      };
      recommendedProxySettings = mkOption {
        type = types.bool;
        default = false;
      };
      clientMaxBodySize = mkOption {
        type = types.str;
        default = "10m";
      };
      virtualHosts = mkOption {
        type = types.attrsOf nginxVhostType;
        default = {
          localhost = { };
        };
      };
    };

    # nixos/modules/services/networking/nats.nix: the whole interface.
    services.nats = {
      enable = lib.mkEnableOption "NATS messaging system";
      user = mkOption {
        type = types.str;
        default = "nats";
      };
      group = mkOption {
        type = types.str;
        default = "nats";
      };
      serverName = mkOption {
        type = types.str;
        default = "nats";
      };
      jetstream = lib.mkEnableOption "JetStream";
      port = mkOption {
        type = types.port;
        default = 4222;
      };
      dataDir = mkOption {
        type = types.path;
        default = "/var/lib/nats";
      };
      settings = mkOption {
        type = natsFormat.type;
        default = { };
      };
      validateConfig = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };

  # What nixos/modules/services/networking/nats.nix sets, so the CIM settings merge with
  # it (and override its ExecStart) exactly as on a real system.
  config = lib.mkIf nats.enable {
    services.nats.settings = {
      server_name = nats.serverName;
      inherit (nats) port;
      jetstream = lib.optionalAttrs nats.jetstream { store_dir = nats.dataDir; };
    };
    systemd.services.nats = {
      description = "NATS messaging system";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      serviceConfig = lib.mkMerge [
        (lib.mkIf (nats.dataDir == "/var/lib/nats") {
          StateDirectory = "nats";
          StateDirectoryMode = "0750";
        })
        {
          Type = "simple";
          ExecStart = "${pkgs.nats-server}/bin/nats-server -c ${natsFormat.generate "nats.conf" nats.settings}";
          Restart = "on-failure";
          User = nats.user;
          Group = nats.group;
          UMask = "0077";
        }
      ];
    };
  };
}
