# The nixpkgs options services.cim.monitoring sets, declared as nixpkgs declares them (names,
# types, defaults), read there with the search tool:
#   nixos/modules/services/monitoring/grafana.nix (NixOS/nixpkgs): `enable`,
#     `provision.enable`, `provision.dashboards`, `provision.datasources`, and the
#     submodules grafanaTypes.dashboardConfig and grafanaTypes.datasourceConfig they use;
#   nixos/modules/services/monitoring/prometheus/default.nix (NixOS/nixpkgs): `enable`,
#     `port`, `scrapeConfigs`, and of promTypes.scrape_config the keys the module sets
#     (`job_name`, `static_configs`: nixpkgs' `mkOpt`, null unless set) with
#     promTypes.static_config.
# Only the interface: what the two services then build from it is nixpkgs' business.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  # pkgs.formats.yaml { } in nixpkgs (provisioningSettingsFormat); the JSON value type
  # accepts the same values here.
  provisioningSettingsFormat = pkgs.formats.json { };

  # grafana.nix: grafanaTypes.dashboardConfig.
  dashboardConfig = types.submodule {
    options = {
      options.path = mkOption { type = types.path; };
      name = mkOption {
        type = types.str;
        default = "default";
      };
      type = mkOption {
        type = types.str;
        default = "file";
      };
    };
    freeformType = provisioningSettingsFormat.type;
  };

  # grafana.nix: grafanaTypes.datasourceConfig.
  datasourceConfig = types.submodule {
    options = {
      access = mkOption {
        type = types.enum [ "proxy" "direct" ];
        default = "proxy";
      };
      editable = mkOption {
        type = types.bool;
        default = false;
      };
      jsonData = mkOption {
        type = types.nullOr types.attrs;
        default = null;
      };
      name = mkOption { type = types.str; };
      secureJsonData = mkOption {
        type = types.nullOr types.attrs;
        default = null;
      };
      type = mkOption { type = types.str; };
      uid = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      url = mkOption {
        type = types.str;
        default = "";
      };
    };
    freeformType = provisioningSettingsFormat.type;
  };

  # grafana.nix: provision.dashboards and provision.datasources share this shape.
  provisioned =
    settings:
    mkOption {
      default = { };
      type = types.submodule {
        options.path = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
        options.settings = mkOption {
          type = types.nullOr (types.submodule { options = settings; });
          default = null;
        };
      };
    };

  apiVersion = mkOption {
    type = types.int;
    default = 1;
  };

  # prometheus/default.nix: promTypes.static_config.
  staticConfig = types.submodule {
    options = {
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
      targets = mkOption { type = types.listOf types.str; };
    };
  };

  # prometheus/default.nix: promTypes.scrape_config (the keys set here).
  scrapeConfig = types.submodule {
    options = {
      job_name = mkOption { type = types.str; };
      static_configs = mkOption {
        type = types.nullOr (types.listOf staticConfig);
        default = null;
      };
    };
  };
in
{
  options.services.grafana = {
    enable = lib.mkEnableOption "grafana";
    provision = {
      enable = lib.mkEnableOption "provision";
      dashboards = provisioned {
        inherit apiVersion;
        providers = mkOption {
          type = types.listOf dashboardConfig;
          default = [ ];
        };
      };
      datasources = provisioned {
        inherit apiVersion;
        datasources = mkOption {
          type = types.listOf datasourceConfig;
          default = [ ];
        };
        deleteDatasources = mkOption {
          type = types.listOf (
            types.submodule {
              options.name = mkOption { type = types.str; };
              options.orgId = mkOption { type = types.int; };
            }
          );
          default = [ ];
        };
        prune = mkOption {
          type = types.bool;
          default = false;
        };
      };
    };
  };

  options.services.prometheus = {
    enable = lib.mkEnableOption "Prometheus monitoring daemon";
    port = mkOption {
      type = types.port;
      default = 9090;
    };
    scrapeConfigs = mkOption {
      type = types.listOf scrapeConfig;
      default = [ ];
    };
  };
}
