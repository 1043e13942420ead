# The flake's own outputs, evaluated with the real nixpkgs lib and stand-ins for its inputs:
# `nixpkgs.lib.nixosSystem` and `testers.runNixOSTest` evaluate against the strict
# declarations here, colmena's `makeHive` hands the hive back. What the flake exports is
# what the tests check, not a copy of it.
{ lib }:
let
  h = import ./eval.nix { inherit lib; };
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  nixpkgs = {
    outPath = "/fake/nixpkgs";
    # nixpkgs' flake.nix adds nixosSystem to its lib; eval-config.nix evaluates the modules.
    lib = lib.extend (
      _: _: {
        nixosSystem = args: h.evalNixos ([ ./nixos/hardware.nix ] ++ args.modules);
      }
    );
    legacyPackages = lib.genAttrs systems (_: h.pkgs);
  };

  colmena = {
    lib.makeHive = hive: hive;
    packages = lib.genAttrs systems (_: {
      colmena = h.pkgs.runCommand "colmena" { } "";
    });
  };

  flake = import ../../flake.nix;
  self = flake.outputs {
    inherit nixpkgs colmena;
    self = self // {
      outPath = toString ../..;
    };
  };
in
self
