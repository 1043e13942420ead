# Just enough of `pkgs` for the modules, the flake and package.nix to evaluate without
# nixpkgs: builders return derivation-shaped attrsets (nothing is built), formats.json is
# nixpkgs' own type, and every package attribute named here exists in nixpkgs 26.05 under
# that name (a misspelt attribute fails evaluation, as it would in a real build).
{
  lib,
  # The VM test runner (./run-nixos-test.nix), which evaluates each node here.
  runNixOSTest,
}:
let
  fakeDrv =
    name: extra:
    let
      hash = builtins.substring 0 32 (builtins.hashString "sha256" (builtins.toJSON [ name (extra.text or "") ]));
    in
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/${hash}-${name}";
      drvPath = "${builtins.storeDir}/${hash}-${name}.drv";
      meta = { };
    }
    // extra;
  package = name: fakeDrv name { pname = name; };

  # pkgs/development/python-modules/<name>/default.nix in NixOS/nixpkgs, each read there.
  pythonPackage = name: extra: fakeDrv "python3.13-${name}" ({ pname = name; } // extra);
  python3Packages =
    lib.genAttrs [
      "aiohttp"
      "boto3"
      "cloudevents"
      "hypothesis"
      "jinja2"
      "mypy"
      "openapi-spec-validator"
      "packaging"
      "playwright"
      "prometheus-client"
      "pydantic"
      "pynacl"
      "pypdf"
      "pytest"
      "pytest-asyncio"
      "pytest-timeout"
      "pyyaml"
      "schemathesis"
      "setuptools"
      "standardwebhooks"
      "typer"
      "wheel"
    ] (name: pythonPackage name { })
    // {
      # pkgs/development/python-modules/nats-py/default.nix: nats-py 2.12's extras. There is
      # no Python nkeys in nixpkgs, so its `nkeys` is the top-level Go tool.
      nats-py = pythonPackage "nats-py" {
        optional-dependencies = {
          aiohttp = [ python3Packages.aiohttp ];
          nkeys = [ self.nkeys ];
        };
      };
      # What the builders were given, for the tests to read; nothing is built.
      buildPythonApplication = args: fakeDrv "${args.pname}-${args.version}" { inherit (args) pname version dependencies; };
      buildPythonPackage = args: pythonPackage args.pname { inherit (args) version dependencies; };
      fetchPypi = args: fakeDrv "${args.pname}-${args.version}.tar.gz" { };
      callPackage = lib.callPackageWith (self // python3Packages);
    };

  self = {
    # What makes it a package set for `nixpkgs.pkgs` (lib.types.pkgs).
    _type = "pkgs";
    inherit lib;
    path = "/fake/nixpkgs";
    stdenv.hostPlatform.system = "x86_64-linux";

    callPackage = lib.callPackageWith self;

    # As in nixpkgs' pkgs/pkgs-lib/formats.nix.
    formats.json =
      { }:
      {
        type =
          let
            valueType =
              lib.types.nullOr (
                lib.types.oneOf [
                  lib.types.bool
                  lib.types.int
                  lib.types.float
                  lib.types.str
                  lib.types.path
                  (lib.types.attrsOf valueType)
                  (lib.types.listOf valueType)
                ]
              )
              // {
                description = "JSON value";
              };
          in
          valueType;
        # `text` is what the real builder writes (it pretty-prints the same JSON).
        generate = name: value: fakeDrv name { text = builtins.toJSON value; json = value; };
      };

    runCommand = name: env: script: fakeDrv name { text = script; inherit script; };
    writeShellScript = name: text: fakeDrv name { inherit text; };
    writeText = name: text: fakeDrv name { inherit text; };
    mkShell = args: fakeDrv "nix-shell" { inherit (args) packages; };

    inherit python3Packages;
    python3 = fakeDrv "python3-3.13" {
      pkgs = python3Packages;
      withPackages = f: fakeDrv "python3-3.13-env" { packages = f python3Packages; };
    };

    testers = { inherit runNixOSTest; };

    # MinIO stays here so a module that still pulled it in would evaluate and be seen: nixpkgs
    # marked it insecure in February 2026 (issue 490996, PR 491337) after upstream archived it.
    minio = fakeDrv "minio" {
      pname = "minio";
      meta.knownVulnerabilities = [ "MinIO upstream archived the repository; see NixOS/nixpkgs#490996" ];
    };
  }
  // lib.genAttrs [
    "coreutils"
    "curl"
    "garage_2"
    "gnugrep"
    "iproute2"
    "jq"
    "minio-client"
    "nats-server"
    "natscli"
    "nixfmt"
    "ruff"
    # pkgs/by-name/nk/nkeys: the Go tool `nk`, not the Python library.
    "nkeys"
    "seaweedfs"
    "systemd"
    "util-linux"
  ] package;
in
self
