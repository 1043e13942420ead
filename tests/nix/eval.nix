# Evaluate the CIM modules without nixpkgs: nixpkgs' lib.evalModules against the strict
# NixOS option declarations in ./nixos-options.nix and the stand-in pkgs in ./fake-pkgs.nix.
{ lib }:
rec {
  pkgs = import ./fake-pkgs.nix {
    inherit lib;
    runNixOSTest = import ./run-nixos-test.nix { inherit lib evalNixos; };
  };

  # A NixOS system of exactly these modules (nothing of CIM unless they import it).
  evalNixos =
    modules:
    lib.evalModules {
      modules = [ ./nixos-options.nix ] ++ modules;
      specialArgs = { inherit pkgs; };
    };

  # A NixOS system with all of services.cim.
  eval = modules: evalNixos ([ ../../modules ] ++ modules);

  # The messages of the assertions that fail, as `nixos-rebuild` would print them.
  failedAssertions =
    config: map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);

  # All a configuration defines that a build would read, minus the options nixpkgs leaves
  # without a value until they are needed: a container's `path`, unset start limits, the
  # package of a service that is off (services.garage.package has no default), and removed
  # options, which throw their message when read.
  systemOf =
    c:
    let
      services = lib.mapAttrs (_: s: removeAttrs s [ "startLimitBurst" "startLimitIntervalSec" ]);
      withoutRemoved = s: s // lib.optionalAttrs (s ? cim) { cim = s.cim // { tier = removeAttrs s.cim.tier [ "minio" ]; }; };
      plain = c: {
        services = withoutRemoved (lib.filterAttrs (_: s: !(s ? enable) || !(builtins.isBool s.enable) || s.enable) c.services);
        inherit (c) networking environment users;
        systemd = {
          services = services c.systemd.services;
          inherit (c.systemd) paths tmpfiles;
        };
      };
    in
    plain c
    // {
      containers = lib.mapAttrs (_: ct: removeAttrs ct [ "path" "config" ] // { config = plain ct.config; }) c.containers;
    };

  # Does evaluating `value` fully fail (a type error, an unknown option, a throw)?
  fails = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
}
