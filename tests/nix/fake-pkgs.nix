# Just enough of `pkgs` for the modules to evaluate without nixpkgs: builders return
# derivation-shaped attrsets (nothing is built), and formats.json is nixpkgs' own type.
{ lib }:
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
    }
    // extra;
  package = name: fakeDrv name { pname = name; };
in
{
  path = "/fake/nixpkgs";

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

  cim = package "cim";
  nats-server = package "nats-server";
  minio = package "minio";
  minio-client = package "minio-client";
  jq = package "jq";
  coreutils = package "coreutils";
}
