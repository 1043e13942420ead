# Evaluate the CIM modules without nixpkgs: nixpkgs' lib.evalModules against the strict
# NixOS option declarations in ./nixos-options.nix and the stand-in pkgs in ./fake-pkgs.nix.
{ lib }:
let
  pkgs = import ./fake-pkgs.nix { inherit lib; };
in
rec {
  inherit pkgs;

  eval =
    modules:
    lib.evalModules {
      modules = [
        ./nixos-options.nix
        ../../modules
      ] ++ modules;
      specialArgs = { inherit pkgs; };
    };

  # The messages of the assertions that fail, as `nixos-rebuild` would print them.
  failedAssertions =
    config: map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);

  # Does evaluating `value` fully fail (a type error, an unknown option, a throw)?
  fails = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
}
