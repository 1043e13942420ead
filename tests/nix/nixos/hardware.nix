# The options a host's hardware file sets (hosts/hardware.nix), as nixpkgs declares them.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  # nixos/modules/tasks/filesystems.nix: nonEmptyStr.
  nonEmptyStr = types.addCheck types.str (s: builtins.match "[ \t\n]*" s == null);
in
{
  options = {
    # nixos/modules/system/boot/loader/grub/grub.nix.
    boot.loader.grub = {
      enable = mkOption {
        type = types.bool;
        default = !config.boot.isContainer;
      };
      device = mkOption {
        type = types.str;
        default = "";
      };
      devices = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };

    # nixos/modules/tasks/filesystems.nix: coreFileSystemOpts and fileSystemOpts.
    fileSystems = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
              };
              mountPoint = mkOption {
                type = nonEmptyStr;
                default = name;
              };
              device = mkOption {
                type = types.nullOr nonEmptyStr;
                default = null;
              };
              fsType = mkOption {
                type = nonEmptyStr;
                default = "auto";
              };
              options = mkOption {
                type = types.nonEmptyListOf nonEmptyStr;
                default = [ "defaults" ];
              };
              label = mkOption {
                type = types.nullOr nonEmptyStr;
                default = null;
              };
            };
          }
        )
      );
      default = { };
      apply = lib.filterAttrs (_: fs: fs.enable);
    };

    # nixos/modules/services/networking/ssh/sshd.nix.
    services.openssh.enable = mkOption {
      type = types.bool;
      default = false;
    };
  };

  config = lib.mkIf config.boot.loader.grub.enable {
    # grub.nix: a bootable system names its boot devices.
    assertions = [
      {
        assertion = config.boot.loader.grub.devices != [ ];
        message = "You must set the option ‘boot.loader.grub.devices’ or 'boot.loader.grub.mirroredBoots' to make the system bootable.";
      }
    ];
    boot.loader.grub.devices = lib.optional (config.boot.loader.grub.device != "") config.boot.loader.grub.device;
  };
}
