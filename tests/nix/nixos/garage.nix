# nixos/modules/services/web-servers/garage.nix (NixOS/nixpkgs): the whole interface, and
# the unit and the admin wrapper it makes. `package` has no default: it must be set.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.services.garage;
  # pkgs.formats.toml in nixpkgs; the JSON value type accepts the same values here.
  toml = pkgs.formats.json { };
in
{
  options.services.garage = {
    enable = lib.mkEnableOption "Garage Object Storage (S3 compatible)";
    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
    };
    logLevel = mkOption {
      type = types.enum [ "error" "warn" "info" "debug" "trace" ];
      default = "info";
    };
    settings = mkOption {
      type = types.submodule {
        freeformType = toml.type;
        options = {
          metadata_dir = mkOption {
            type = types.path;
            default = "/var/lib/garage/meta";
          };
          data_dir = mkOption {
            type = types.either types.path (types.listOf types.attrs);
            default = "/var/lib/garage/data";
          };
        };
      };
    };
    package = mkOption { type = types.package; };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."garage.toml".source = toml.generate "garage.toml" cfg.settings;
    environment.systemPackages = [ (pkgs.writeShellScript "garage" "exec ${cfg.package}/bin/garage \"$@\"") ];
    systemd.services.garage = {
      description = "Garage Object Storage (S3 compatible)";
      after = [ "network.target" "network-online.target" ];
      wants = [ "network.target" "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/garage server";
        StateDirectory = "garage";
        DynamicUser = lib.mkDefault true;
        ProtectHome = true;
        NoNewPrivileges = true;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        LimitNOFILE = 42000;
      };
      environment.RUST_LOG = lib.mkDefault "garage=${cfg.logLevel}";
    };
  };
}
