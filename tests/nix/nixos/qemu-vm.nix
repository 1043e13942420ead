# What nixpkgs' VM test framework adds to every node, as the test driver evaluates it:
# nixos/modules/virtualisation/qemu-vm.nix and disk-size-option.nix (NixOS/nixpkgs).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.virtualisation = {
    # qemu-vm.nix: `types.ints.positive`, so two different sizes conflict.
    memorySize = mkOption {
      type = types.ints.positive;
      default = 1024;
    };
    cores = mkOption {
      type = types.ints.positive;
      default = 1;
    };
    vlans = mkOption {
      type = types.listOf types.ints.unsigned;
      default = if config.virtualisation.interfaces == { } then [ 1 ] else [ ];
    };
    interfaces = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            vlan = mkOption { type = types.ints.unsigned; };
            assignIP = mkOption {
              type = types.bool;
              default = false;
            };
          };
        }
      );
      default = { };
    };
    # disk-size-option.nix; qemu-vm.nix sets diskSizeAutoSupported = false.
    diskSizeAutoSupported = mkOption {
      type = types.bool;
      default = true;
      internal = true;
    };
    diskSize = mkOption {
      type = types.either (types.enum [ "auto" ]) types.ints.positive;
      default = if config.virtualisation.diskSizeAutoSupported then "auto" else 1024;
    };
  };
  config.virtualisation.diskSizeAutoSupported = false;
}
