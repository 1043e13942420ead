# The machine itself. Placeholders: replace them with the host's
# hardware-configuration.nix. Kept apart from ./cim.nix so the evaluation tests can check
# the hosts' CIM settings without nixpkgs' hardware options.
{ lib, ... }:
{
  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";
  boot.loader.grub.devices = lib.mkDefault [ "/dev/sda" ];
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  services.openssh.enable = true;
}
