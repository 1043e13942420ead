# The `cim` Python distribution, built from pyproject.toml with nixpkgs' Python packages.
{
  lib,
  python3Packages,
}:
let
  pyproject = lib.importTOML ./pyproject.toml;
  # Derived from pyproject.toml's [project] dependencies: one list, no second edit.
  pythonDeps = import ./nix/python-deps.nix { inherit lib; };
in
python3Packages.buildPythonApplication {
  pname = "cim";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the build reads, so editing the Nix files or the tests does not rebuild it.
  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions [
      ./pyproject.toml
      ./agents
      (lib.fileset.maybeMissing ./README.md)
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = pythonDeps.dependencies python3Packages;

  pythonImportsCheck = [
    "cim"
    "cim.cli.main"
  ];

  # The pytest suite needs real servers (nats-server, weed) started on loopback; it runs in
  # CI and in the VM tests. Here: the command starts and the store agent's config checks.
  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/cim --version
    echo '{"capability": "store"}' > store.json
    $out/bin/cim config check store.json
    runHook postInstallCheck
  '';

  meta = {
    description = (pyproject.project.description or "CIM");
    license = lib.licenses.mit;
    mainProgram = "cim";
  };
}
