# Secret files across reboots and rotations. Every unit that reads secret files names them in
# services.cim.keys.required; for each such unit this module adds:
# - `ConditionPathExists=` on the unit for each file: while one is missing the unit is skipped,
#   not failed, and nothing waits on it (boot, `nixos-rebuild switch` and `colmena apply` with
#   post-activation keys all go on; colmena's /run/keys is a ramfs, empty after a reboot);
# - `cim-keys-<unit>.service`, run at boot and whenever one of the files or its folder
#   changes (`cim-keys-<unit>.path`): it logs which files are missing, starts the unit once
#   they are all there, and restarts it when their content changed (colmena re-uploads every
#   key on each apply, so a new file with the same content restarts nothing);
# - an order after colmena's `<key>-key.service` for the keys colmena uploads, when the host
#   is part of a colmena hive (`After=` alone: it orders, it never waits for a missing key).
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  top = config.services.cim;
  required = lib.filterAttrs (_: r: r.files != [ ]) top.keys.required;

  # `container@cim-store` -> `container-cim-store`: an `@` would make a template instance.
  safe = unit: builtins.replaceStrings [ "@" ] [ "-" ] unit;
  handler = unit: "cim-keys-${safe unit}";
  stateDir = "/run/cim-keys";

  # colmena declares deployment.keys only inside its own evaluation.
  colmenaKeys = lib.optionalAttrs (options ? deployment.keys) config.deployment.keys;
  colmenaUnits =
    files: map (attr: "${attr}-key.service") (builtins.attrNames (lib.filterAttrs (_: k: builtins.elem k.path files) colmenaKeys));

  handlerScript =
    unit: r:
    pkgs.writeShellScript (handler unit) ''
      set -u
      files=(${lib.escapeShellArgs r.files})
      missing=""
      for f in "''${files[@]}"; do
        if [ ! -e "$f" ]; then
          missing="$missing $f"
        ${lib.optionalString (r.user != null) ''
          elif ! ${pkgs.util-linux}/bin/runuser -u ${r.user} -- test -r "$f"; then
            missing="$missing $f(unreadable by ${r.user}: give it group ${r.user} and mode 0640)"
        ''}
        fi
      done
      if [ -n "$missing" ]; then
        echo "${unit} waits for its secret files:$missing. After a reboot /run/keys is empty until the keys are uploaded again (colmena upload-keys); agenix or sops-nix keep them across reboots. It starts by itself once they are there." >&2
        exit 0
      fi
      install -d -m 0700 ${stateDir}
      sum=$(${pkgs.coreutils}/bin/cat -- "''${files[@]}" | ${pkgs.coreutils}/bin/sha256sum)
      seen=$(${pkgs.coreutils}/bin/cat ${stateDir}/${safe unit} 2>/dev/null || true)
      echo "$sum" > ${stateDir}/${safe unit}
      if ! ${pkgs.systemd}/bin/systemctl is-active --quiet ${unit}.service; then
        echo "${unit}: every secret file is there; starting it" >&2
        exec ${pkgs.systemd}/bin/systemctl start --no-block ${unit}.service
      elif [ -n "$seen" ] && [ "$seen" != "$sum" ]; then
        echo "${unit}: a secret file changed; restarting it" >&2
        exec ${pkgs.systemd}/bin/systemctl try-restart --no-block ${unit}.service
      fi
    '';
in
{
  options.services.cim.keys.required = lib.mkOption {
    type = lib.types.attrsOf (
      lib.types.submodule {
        options = {
          files = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ ];
            description = "Secret files the unit reads.";
          };
          user = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            description = "A user that must be able to read them itself (nginx reads its basic auth file on every request).";
          };
        };
      }
    );
    default = { };
    internal = true;
    description = "Secret files by the systemd service (name without `.service`) that reads them; set by the CIM modules.";
  };

  config = lib.mkIf top.enable {
    systemd.services = lib.mkMerge (
      lib.mapAttrsToList (unit: r: {
        ${unit} = {
          unitConfig.ConditionPathExists = r.files;
          after = colmenaUnits r.files;
        };
        ${handler unit} = {
          description = "CIM: start ${unit} once its secret files are there, restart it when they change";
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = handlerScript unit r;
          };
        };
      }) required
    );

    systemd.paths = lib.mapAttrs' (
      unit: r:
      lib.nameValuePair (handler unit) {
        description = "CIM: watch the secret files of ${unit}";
        wantedBy = [ "multi-user.target" ];
        pathConfig = {
          # The folders too: a file created or renamed into place (colmena, agenix) is an
          # event in its folder, while a path that does not exist yet has no watch of its own.
          PathChanged = r.files ++ lib.unique (map builtins.dirOf r.files);
          Unit = "${handler unit}.service";
        };
      }
    ) required;
  };
}
