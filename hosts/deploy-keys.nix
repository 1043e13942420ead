# colmena `deployment.keys` for one host: the nkey seeds and other secret files, read on the
# deploying machine from $CIM_SECRETS/<host>/ (an absolute folder kept out of git, e.g.
# `CIM_SECRETS=~/cim-secrets colmena apply`, so it does not matter where colmena runs) and
# uploaded to /run/keys on the host before activation. They never pass through the Nix store.
#
# A name is a file readable by root only; { name; group; } makes it readable by that group
# too, for a service that reads the file itself, e.g. nginx's basic auth file:
#   { name = "cim-ui-htpasswd"; group = "nginx"; }
host: entries:
builtins.listToAttrs (
  map (
    entry:
    let
      key = if builtins.isString entry then { name = entry; } else entry;
    in
    {
      inherit (key) name;
      value = {
        keyCommand = [
          "sh"
          "-c"
          ''exec cat -- "''${CIM_SECRETS:?set CIM_SECRETS to the folder that holds ${host}/${key.name}}/${host}/${key.name}"''
        ];
        destDir = "/run/keys";
        user = "root";
        group = key.group or "root";
        permissions = if key ? group then "0640" else "0600";
      };
    }
  ) entries
)
