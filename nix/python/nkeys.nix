# nkeys (the NATS key library for Python), which nixpkgs does not package: there is no
# pkgs/development/python-modules/nkeys in NixOS/nixpkgs, and the `nkeys` that nats-py's
# optional-dependencies name resolves to the Go tool pkgs/by-name/nk/nkeys. Built from
# PyPI's source release; the hash is that file's SHA-256.
{
  buildPythonPackage,
  fetchPypi,
  setuptools,
  pynacl,
}:
buildPythonPackage rec {
  pname = "nkeys";
  version = "0.2.1";
  pyproject = true;

  src = fetchPypi {
    inherit pname version;
    hash = "sha256-OiAdzSA9i7BboohNRBsskpGLKlN6ENMk5zc4iH3enaM=";
  };

  build-system = [ setuptools ];
  dependencies = [ pynacl ];

  pythonImportsCheck = [ "nkeys" ];
}
