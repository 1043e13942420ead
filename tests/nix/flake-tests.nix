# Evaluation tests of what the flake exports: the package and its dependencies, every pair
# of nixosModules, every nixosConfiguration with its hardware file, every colmena node, and
# every VM test's nodes. Each test is { expr; expected; } like those in ./default.nix.
{ lib }:
let
  h = import ./eval.nix { inherit lib; };
  f = import ./fixtures.nix { inherit lib; };
  flake = import ./flake-outputs.nix { inherit lib; };
  system = "x86_64-linux";

  pyproject = lib.importTOML ../../pyproject.toml;
  # Read independently of nix/python-deps.nix: the name before any extra or version, and
  # each extra (for these packages an extra is the package of the same name).
  requirementNames =
    requirements:
    lib.unique (
      lib.concatMap (
        r:
        let
          m = builtins.match "([A-Za-z0-9._-]+)([[]([a-z0-9,]*)[]])?.*" r;
        in
        [ (lib.toLower (builtins.elemAt m 0)) ]
        ++ lib.optionals (builtins.elemAt m 2 != null) (lib.splitString "," (builtins.elemAt m 2))
      ) requirements
    );
  sorted = list: lib.sort lib.lessThan list;
  pnames = map (p: p.pname);

  cim = flake.packages.${system}.cim;
  shellPython = builtins.head (builtins.filter (p: p ? packages) flake.devShells.${system}.default.packages);

  # Every pair of the flake's NixOS modules (and each one alone), as a user combines them.
  moduleNames = builtins.attrNames flake.nixosModules;
  pairs = lib.unique (
    lib.concatMap (a: map (b: sorted (lib.unique [ a b ])) moduleNames) moduleNames
  );
  evalPair =
    names:
    let
      config = (h.evalNixos (map (n: flake.nixosModules.${n}) names ++ [ f.common f.identities { networking.hostName = "pair"; } ])).config;
    in
    {
      package = config.services.cim.package.name;
      failed = h.failedAssertions config;
      containers = builtins.attrNames config.containers;
    };
  capabilitiesOf = names: sorted (map (n: "cim-${n}") (builtins.filter (n: n != "default") names));

  # A configuration's system, forced completely (what a build would need).
  evaluates = c: !(h.fails (h.systemOf c));

  vmTests = lib.filterAttrs (name: _: lib.hasPrefix "vm-" name) flake.checks.${system};

  hosts = flake.nixosConfigurations;

  # The nixpkgs packages a configuration pulls in: derivations it holds, and store paths in
  # its strings, named by the stand-in packages they belong to.
  storePathName = "${builtins.storeDir}/[0-9a-f]{32}-([^/ \"'\n]+)";
  derivationNames =
    value:
    if builtins.isString value then
      lib.concatMap (m: if builtins.isList m then m else [ ]) (builtins.split storePathName value)
    else if builtins.isList value then
      lib.concatMap derivationNames value
    else if builtins.isAttrs value then
      # A generated script or file counts with what its text names.
      if value.type or null == "derivation" then
        [ value.name ] ++ derivationNames (value.text or "")
      else
        lib.concatMap derivationNames (builtins.attrValues value)
    else
      [ ];
  packages = lib.filterAttrs (_: p: builtins.isAttrs p && p.type or null == "derivation") h.pkgs;
  packageNames = map (p: p.name) (builtins.attrValues packages) ++ [ cim.name ];
  pulledIn = c: builtins.filter (n: builtins.elem n packageNames) (derivationNames (h.systemOf c));
  insecure = builtins.attrNames (lib.filterAttrs (_: p: (p.meta.knownVulnerabilities or [ ]) != [ ]) packages);
  everyConfiguration =
    map (host: host.config) (builtins.attrValues hosts)
    ++ lib.concatMap (t: builtins.attrValues t.nodes) (builtins.attrValues vmTests);
in
{
  # --- the package: its dependencies come from pyproject.toml ------------------------------
  "the package depends on every runtime requirement in pyproject.toml" = {
    expr = sorted (pnames cim.dependencies);
    expected = sorted (requirementNames pyproject.project.dependencies);
  };
  "the devShell's Python has the package's runtime requirements" = {
    expr = lib.subtractLists (pnames shellPython.packages) (pnames cim.dependencies);
    expected = [ ];
  };
  "a requirement python3Packages lacks fails evaluation" = {
    expr = h.fails ((import ../../nix/python-deps.nix { inherit lib; }).dependencies (removeAttrs h.pkgs.python3Packages [ "pypdf" ]));
    expected = true;
  };
  "a requirement's extra pulls in the packages nixpkgs lists for it" = {
    expr = builtins.elem "nkeys" (pnames cim.dependencies);
    expected = true;
  };

  # --- nixosModules: any combination evaluates -------------------------------------------
  "every pair of nixosModules evaluates, defines the package once and passes its assertions" = {
    expr = map evalPair pairs;
    expected = map (names: {
      package = "cim-${pyproject.project.version}";
      failed = [ ];
      containers = capabilitiesOf names;
    }) pairs;
  };

  # --- nixosConfigurations and the colmena hive --------------------------------------------
  "every nixosConfiguration evaluates with its hardware file and passes every assertion" = {
    expr = lib.mapAttrs (_: host: { evaluates = evaluates host.config; failed = h.failedAssertions host.config; }) hosts;
    expected = lib.mapAttrs (_: _: { evaluates = true; failed = [ ]; }) hosts;
  };
  "every colmena node evaluates with colmena's deployment options and passes every assertion" = {
    expr = lib.mapAttrs (
      name: node:
      let
        c = (h.evalNixos [ (import ./nixos/colmena.nix name) ./nixos/hardware.nix node ]).config;
      in
      { evaluates = evaluates c; failed = h.failedAssertions c; }
    ) (removeAttrs flake.colmena [ "meta" ]);
    expected = lib.mapAttrs (_: _: { evaluates = true; failed = [ ]; }) hosts;
  };

  # --- what nixpkgs packages the modules pull in, for a reviewer to see -----------------
  "the packages the hosts and the VM tests pull in from nixpkgs, none marked insecure" = {
    expr = {
      packages = lib.sort lib.lessThan (lib.unique (lib.concatMap pulledIn everyConfiguration));
      insecure = builtins.filter (n: builtins.elem n insecure) (lib.concatMap pulledIn everyConfiguration);
    };
    # By nixpkgs attribute: a reviewer checks each against nixpkgs' meta (insecure, broken).
    expected = {
      packages = [ "cim-0.1.0" "coreutils" "curl" "garage_2" "jq" "nats-server" "natscli" "systemd" ];
      insecure = [ ];
    };
  };

  # --- the VM tests: their nodes evaluate as the test driver would build them ------------
  "every VM test's nodes evaluate and pass every assertion, and its script renders" = {
    expr = lib.mapAttrs (
      _: t: {
        # With the test framework's options: an option conflict there (memorySize) counts.
        nodes = lib.mapAttrs (
          _: c: {
            evaluates = !(h.fails (h.systemOf c // { inherit (c) virtualisation; }));
            failed = h.failedAssertions c;
          }
        ) t.nodes;
        script = builtins.isString t.testScript;
      }
    ) vmTests;
    expected = lib.mapAttrs (
      _: t: {
        nodes = lib.mapAttrs (_: _: { evaluates = true; failed = [ ]; }) t.nodes;
        script = true;
      }
    ) vmTests;
  };
}
