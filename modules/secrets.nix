# What makes a value an acceptable secret *file* option, shared by every module that takes
# one. Plain functions of lib, not a NixOS module.
{ lib }:
rec {
  # A path given as a string. Nix path values are accepted by the type only so that
  # assertions can explain, instead of a bare type error, why they are refused.
  fileType = lib.types.nullOr (lib.types.either lib.types.str lib.types.path);

  # nkey seeds are base32: S, the key type, then 56 more characters.
  looksLikeSeed = s: builtins.isString s && builtins.match "S[UNAOC][A-Z2-7]{56}[[:space:]]*" s != null;

  # Why `value` cannot be the secret file option `option`, or null if it can.
  fileProblem =
    option: value:
    if value == null then
      null
    else if builtins.isPath value then
      "${option} is the Nix path ${toString value}, which would be copied into the world-readable Nix store. Give the absolute path of a file outside the store as a string, e.g. \"/run/keys/cim-store.nk\" (colmena deployment.keys, agenix or sops-nix can put it there)."
    else if looksLikeSeed value then
      "${option} holds an nkey seed itself instead of the path of a file: the secret would be written into the Nix store. Run `cim keys new NAME --dir DIR` and set ${option} to the file it writes."
    else if lib.hasPrefix builtins.storeDir value then
      "${option} = \"${value}\" is inside the Nix store, which every local user can read. Keep the secret in a file outside the store (e.g. /run/keys) and give that path."
    else if !(lib.hasPrefix "/" value) then
      "${option} = \"${value}\" must be an absolute path to a file holding the secret."
    else
      null;

  # Why `value` cannot be the public-key option `option`, or null if it can.
  publicKeyProblem =
    option: value:
    if value == null then
      null
    else if looksLikeSeed value then
      "${option} is an nkey SEED, a secret that would land in the Nix store. Put the seed in a file (its *SeedFile option) and give here the PUBLIC key, the U... line that `cim keys new` prints."
    else if builtins.match "U[A-Z2-7]{55}" value == null then
      "${option} = \"${value}\" is not a user nkey public key (56 characters starting with U); use the key that `cim keys new` prints."
    else
      null;

  # Keys of a rendered config (agent settings, provisioning spec) that would carry a secret
  # inline. Every secret an agent reads is named by a `*_file` key instead, so these are
  # always a mistake. Case does not matter: `awsSecretAccessKey` counts as much as
  # `aws_secret_access_key`.
  secretLookingKey =
    key:
    builtins.match ".*(secret|password|passwd|token|seed|creds|credential|access_key|accesskey|private_key|privatekey|api_key|apikey).*" (lib.toLower key) != null
    && !(lib.hasSuffix "_file" key)
    && !(lib.hasSuffix "File" key);

  # THE rule for inline secrets, used for every value rendered into the Nix store: the
  # option paths under `prefix` whose key looks like a secret and holds a value, or whose
  # value is an nkey seed, through attrsets and lists at any depth.
  inlineSecrets =
    prefix: value:
    if builtins.isAttrs value then
      lib.concatLists (
        lib.mapAttrsToList (
          key: v:
          let
            path = "${prefix}.${key}";
          in
          if secretLookingKey key && (builtins.isString v || builtins.isInt v || builtins.isFloat v) then
            [ path ]
          else
            inlineSecrets path v
        ) value
      )
    else if builtins.isList value then
      lib.concatLists (lib.imap0 (i: v: inlineSecrets "${prefix}.${toString i}" v) value)
    else if looksLikeSeed value then
      [ prefix ]
    else
      [ ];

  # The assertion message for one such path.
  inlineSecretMessage =
    path:
    "${path} would put a secret into the rendered config, which lands in the world-readable Nix store. Write the secret to a file outside the store (e.g. under /run/keys) and name that file instead: a `*File` option of services.cim, or the matching `*_file` settings key.";
}

