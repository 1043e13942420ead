# nixos/modules/misc/nixpkgs.nix (NixOS/nixpkgs): the options a container's config sets to
# reuse the host's package set.
{ lib, ... }:
{
  options.nixpkgs = {
    # `types.pkgs`: one definition only, and it must be a package set.
    pkgs = lib.mkOption {
      type = lib.types.pkgs;
    };
    hostPlatform = lib.mkOption {
      type = lib.types.either lib.types.str lib.types.attrs;
      apply = lib.systems.elaborate;
    };
  };
}
