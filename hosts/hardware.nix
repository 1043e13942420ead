# The machine itself. Placeholders: replace them with the host's
# hardware-configuration.nix. Kept apart from ./cim.nix so the evaluation tests can check
# the hosts' CIM settings without nixpkgs' hardware options.
{ lib, ... }:
{
  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";
  # `device`, not `devices`: grub.nix defines `devices` itself at normal priority, which
  # would drop a mkDefault list here and leave the system unbootable.
  boot.loader.grub.device = lib.mkDefault "/dev/sda";
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  services.openssh.enable = true;
}
