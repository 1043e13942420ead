# colmena `deployment.keys` for one host: the nkey seeds and the S3 credentials, read on
# the deploying machine from secrets/<host>/ (relative to the flake, where `colmena` runs;
# keep that directory out of git) and uploaded to /run/keys on the host before
# activation. They never pass through the Nix store.
host: names:
builtins.listToAttrs (
  map (file: {
    name = file;
    value = {
      keyCommand = [
        "cat"
        "secrets/${host}/${file}"
      ];
      destDir = "/run/keys";
      user = "root";
      group = "root";
      permissions = "0600";
    };
  }) names
)
