# Secret files across reboots and rotations. Every unit that reads a secret file names it in
# services.cim.keys.required; for each such unit this module adds:
# - a waiter, `cim-keys-<unit>.service`, that the unit requires: it logs which files are
#   missing and waits for them, so a host rebooted before its keys are back (colmena's
#   /run/keys is a ramfs) holds the unit instead of failing it;
# - an order after colmena's `<key>-key.service` for the keys colmena uploads, when the host
#   is part of a colmena hive;
# - a path unit that restarts the unit when one of its files is replaced (colmena and agenix
#   write a new inode, which a running bind mount or credential would never see).
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
  waiter = unit: "cim-keys-${safe unit}";
  changed = unit: "cim-keys-${safe unit}-changed";

  # colmena declares deployment.keys only inside its own evaluation.
  colmenaKeys = lib.optionalAttrs (options ? deployment.keys) config.deployment.keys;
  colmenaUnits =
    files: map (attr: "${attr}-key.service") (builtins.attrNames (lib.filterAttrs (_: k: builtins.elem k.path files) colmenaKeys));

  waitScript =
    unit: r:
    pkgs.writeShellScript "${waiter unit}" ''
      # Polls rather than exits: the unit it guards starts the moment the last file is back.
      said=""
      while :; do
        missing=""
        for f in ${lib.escapeShellArgs r.files}; do
          [ -e "$f" ] || missing="$missing $f"
          ${lib.optionalString (r.user != null) ''
            if [ -e "$f" ] && ! ${pkgs.util-linux}/bin/runuser -u ${r.user} -- test -r "$f"; then
              missing="$missing $f(unreadable by ${r.user}: give it group ${r.user}, mode 0640)"
            fi
          ''}
        done
        [ -z "$missing" ] && break
        if [ "$missing" != "$said" ]; then
          echo "${unit} waits for its secret files:$missing. After a reboot /run/keys is empty until the keys are uploaded again (colmena upload-keys); agenix or sops-nix keep them across reboots." >&2
          said="$missing"
        fi
        sleep 2
      done
      [ -n "$said" ] && echo "${unit}: every secret file is there now" >&2
      exit 0
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
        ${waiter unit} = {
          description = "CIM: wait for the secret files of ${unit}";
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            # Waits as long as the keys are away; the unit it guards is held, not failed.
            TimeoutStartSec = "infinity";
            ExecStart = waitScript unit r;
          };
          wants = colmenaUnits r.files;
          after = colmenaUnits r.files;
        };
        ${unit} = {
          requires = [ "${waiter unit}.service" ];
          after = [ "${waiter unit}.service" ] ++ colmenaUnits r.files;
          wants = colmenaUnits r.files;
        };
        ${changed unit} = {
          description = "CIM: restart ${unit} after one of its secret files changed";
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.systemd}/bin/systemctl try-restart ${unit}.service";
          };
        };
      }) required
    );

    systemd.paths = lib.mapAttrs' (
      unit: r:
      lib.nameValuePair (changed unit) {
        description = "CIM: watch the secret files of ${unit}";
        wantedBy = [ "multi-user.target" ];
        pathConfig = {
          PathChanged = r.files;
          Unit = "${changed unit}.service";
        };
      }
    ) required;
  };
}
