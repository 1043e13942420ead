# The `tier` capability: units move JetStream -> S3 (Garage on this host, or any S3 endpoint)
# -> Wasabi by policy, reads go through
# the location index, and the event stream is exported to the archive for disaster recovery.
# Tiers and policies are Nix attrsets rendered into the agent's settings; S3 keys are only
# ever files, bind-mounted into the container and named there by their credential path.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.cim.tier;
  fmt = pkgs.formats.json { };
  secrets = import ./secrets.nix { inherit lib; };
  credentialPath = id: "/run/credentials/cim-agent.service/${id}";

  tierType = lib.types.submodule (
    { name, ... }:
    {
      freeformType = fmt.type;
      options = {
        url = lib.mkOption {
          type = lib.types.str;
          example = "s3://cim-warm/units";
          description = "Where the tier is: `s3://bucket/prefix`, `file:///path` or `jetstream://BUCKET`.";
        };
        endpoint = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "http://10.233.2.1:9000";
          description = "S3 endpoint URL (Garage, MinIO, Wasabi, any S3); AWS when null.";
        };
        region = lib.mkOption {
          type = lib.types.str;
          default = "us-east-1";
          description = "S3 region.";
        };
        addressingStyle = lib.mkOption {
          type = lib.types.enum [ "path" "virtual" "auto" ];
          default = "path";
          description = "S3 addressing style (`path` for Garage and MinIO).";
        };
        credentialsFile = lib.mkOption {
          type = secrets.fileType;
          default = null;
          example = "/run/keys/cim-s3.env";
          description = ''
            File outside the Nix store with the tier's S3 keys (`AWS_ACCESS_KEY_ID=`/`AWS_SECRET_ACCESS_KEY=`
            or `MINIO_ROOT_USER=`/`MINIO_ROOT_PASSWORD=` lines), bind-mounted into the container.
          '';
        };
        order = lib.mkOption {
          type = lib.types.int;
          default = 100;
          description = "Position from hot to cold (lower is hotter); the archive tier always comes last.";
        };
      };
    }
  );

  # The agent's `tiers` list: hot to cold, keys in the agent's spelling, keys as credential paths.
  renderTier =
    name: t:
    lib.filterAttrs (_: v: v != null) (
      builtins.removeAttrs t [ "credentialsFile" "order" "addressingStyle" ]
      // {
        inherit name;
        addressing_style = t.addressingStyle;
        credentials_file = if t.credentialsFile != null then credentialPath "tier-${name}" else null;
      }
    );
  ordered = lib.sort (a: b: a.value.order < b.value.order || (a.value.order == b.value.order && a.name < b.name)) (
    lib.mapAttrsToList lib.nameValuePair cfg.tiers
  );
  archiveTier = lib.optional cfg.archive.enable {
    name = "archive";
    url = "s3://${cfg.archive.bucket}/${cfg.archive.prefix}";
    inherit (cfg.archive) endpoint region;
    addressing_style = cfg.archive.addressingStyle;
    inherit (cfg.archive) checksum;
    credentials_file = credentialPath "tier-archive";
  };
  garage = cfg.garage;
  # Made at activation, root-only, never in the Nix store: Garage's RPC secret (as the
  # environment file nixpkgs' services.garage reads) and the tier's S3 key for the bucket.
  garageDir = "/var/lib/cim-garage";
  garageEnv = "${garageDir}/garage.env";
  garageKeyFile = "${garageDir}/tier.env";
  garageCli = "${garage.package}/bin/garage";
in
{
  imports = [
    (lib.mkRemovedOptionModule [ "services" "cim" "tier" "minio" ] ''
      MinIO is archived upstream and nixpkgs marks it insecure (NixOS/nixpkgs#490996, #491337).
      For an S3 tier on this host set services.cim.tier.garage.enable = true (nixpkgs' Garage,
      bucket and key made at activation). Any S3 endpoint, MinIO included, still works as
      services.cim.tier.tiers.<name> = { url = "s3://bucket/prefix"; endpoint = "http://..."; credentialsFile = "/run/keys/..."; }.
    '')
    (import ./capability.nix {
      name = "tier";
      extraSecretFiles = {
        "tier-NAME" = "S3 keys of the tier NAME (set through `services.cim.tier.tiers.NAME.credentialsFile`)";
        "tier-archive" = "S3 keys of the archive (set through `services.cim.tier.archive.credentialsFile`)";
      };
    })
  ];

  options.services.cim.tier = {
    tiers = lib.mkOption {
      type = lib.types.attrsOf tierType;
      default = { };
      example = lib.literalExpression ''
        { cold = { url = "s3://cim-cold/units"; endpoint = "http://s3.example.org:9000"; credentialsFile = "/run/keys/cim-s3.env"; }; }
      '';
      description = "The colder tiers by name (the hot tier, `hot`, is the content bucket). Names are recorded in events: never rename one that holds data.";
    };

    policies = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule { freeformType = fmt.type; });
      default = { };
      example = lib.literalExpression ''
        {
          warm-after-30d = { from = "hot"; to = "warm"; action = "move"; min_age = "30d"; };
          drop-scratch = { action = "expire"; labels = [ "scratch" ]; min_age = "7d"; };
        }
      '';
      description = "Policies by name: `from`, `to`, `action` (move, copy or expire), `min_age`, `min_size`, `max_size`, `labels`, `idle` (last access).";
    };

    archive = {
      enable = lib.mkEnableOption "the archive tier (Wasabi or any S3): every unit is copied there and the event stream exported";
      endpoint = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "https://s3.eu-central-1.wasabisys.com";
        description = "S3 endpoint of the archive.";
      };
      bucket = lib.mkOption {
        type = lib.types.str;
        default = "cim-archive";
        description = "Bucket of the archive (it must exist).";
      };
      prefix = lib.mkOption {
        type = lib.types.str;
        default = "cim";
        description = "Prefix of every object in the archive bucket.";
      };
      region = lib.mkOption {
        type = lib.types.str;
        default = "us-east-1";
        description = "S3 region of the archive.";
      };
      addressingStyle = lib.mkOption {
        type = lib.types.enum [ "path" "virtual" "auto" ];
        default = "path";
        description = "S3 addressing style of the archive.";
      };
      checksum = lib.mkOption {
        type = lib.types.enum [ "crc32" "sha256" ];
        default = "crc32";
        description = ''
          The S3 checksum every upload to the archive carries, checked by the server against what it stored.
          The bytes were hashed to their CID already; `sha256` makes the server hash them with SHA-256 too
          (slower). Other tiers take `checksum` in their attrset.
        '';
      };
      credentialsFile = lib.mkOption {
        type = secrets.fileType;
        default = null;
        example = "/run/keys/cim-wasabi.env";
        description = "File outside the Nix store with the archive's S3 keys (`AWS_ACCESS_KEY_ID=`, `AWS_SECRET_ACCESS_KEY=`).";
      };
    };

    garage = {
      enable = lib.mkEnableOption ''
        Garage on this host (nixpkgs' `services.garage`) as the `warm` tier. At activation a
        one-node layout is applied, the bucket is made, and an S3 key for the tier agent is
        made and written to a root-only file; nothing is typed in and no secret is in the store'';
      package = lib.mkOption {
        type = lib.types.package;
        default = pkgs.garage_2;
        defaultText = lib.literalExpression "pkgs.garage_2";
        description = "The Garage package (nixpkgs' `services.garage.package` has no default). Read Garage's notes before a major upgrade.";
      };
      bucket = lib.mkOption {
        type = lib.types.str;
        default = "cim-warm";
        description = "The bucket of the `warm` tier, made at activation.";
      };
      s3Port = lib.mkOption {
        type = lib.types.port;
        default = 3900;
        description = "Port of Garage's S3 API; only the tier container may reach it, over its link.";
      };
      capacity = lib.mkOption {
        type = lib.types.str;
        default = "100G";
        description = "Capacity this node offers in Garage's layout (`garage layout assign -c`).";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        services.cim.tier.secretFiles =
          lib.mapAttrs' (name: t: lib.nameValuePair "tier-${name}" t.credentialsFile) (
            lib.filterAttrs (_: t: t.credentialsFile != null) cfg.tiers
          )
          // lib.optionalAttrs cfg.archive.enable { tier-archive = cfg.archive.credentialsFile; };

        services.cim.tier.settings = {
          tiers = map (t: renderTier t.name t.value) ordered ++ archiveTier;
          policies = lib.mapAttrsToList (name: p: { inherit name; } // p) cfg.policies;
          backup = lib.mkIf cfg.archive.enable { tier = lib.mkDefault "archive"; };
        };

        assertions = [
          {
            assertion = !cfg.archive.enable || cfg.archive.credentialsFile != null;
            message = "services.cim.tier.archive.credentialsFile must name the file with the archive's S3 keys.";
          }
        ]
        ++ lib.mapAttrsToList (name: t: {
          assertion = !(lib.hasPrefix "s3://" t.url) || t.credentialsFile != null;
          message = "services.cim.tier.tiers.${name}.credentialsFile must name the file with its S3 keys.";
        }) cfg.tiers;
      }

      (lib.mkIf garage.enable {
        services.garage = {
          enable = true;
          inherit (garage) package;
          environmentFile = garageEnv;
          settings = {
            replication_factor = lib.mkDefault 1;
            rpc_bind_addr = lib.mkDefault "127.0.0.1:3901";
            rpc_public_addr = lib.mkDefault "127.0.0.1:3901";
            # On every address (the container's link appears only once the container starts);
            # the firewall opens it only on that link.
            s3_api = {
              api_bind_addr = lib.mkDefault "[::]:${toString garage.s3Port}";
              s3_region = lib.mkDefault "garage";
            };
          };
        };
        services.cim.tier.tiers.warm = {
          url = lib.mkDefault "s3://${garage.bucket}/units";
          endpoint = lib.mkDefault "http://${cfg.hostAddress}:${toString garage.s3Port}";
          region = lib.mkDefault "garage";
          credentialsFile = lib.mkDefault garageKeyFile;
          order = lib.mkDefault 10;
        };
        networking.firewall.interfaces."ve-cim-tier".allowedTCPPorts = [ garage.s3Port ];

        # Garage refuses to start without an RPC secret; one node keeps it to itself.
        systemd.services.cim-garage-secret = {
          description = "CIM: Garage's RPC secret, made once";
          wantedBy = [ "garage.service" ];
          before = [ "garage.service" ];
          unitConfig.ConditionPathExists = "!${garageEnv}";
          serviceConfig = {
            Type = "oneshot";
            UMask = "0077";
          };
          script = ''
            install -d -m 0700 ${garageDir}
            printf 'GARAGE_RPC_SECRET=%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" > ${garageEnv}.tmp
            mv ${garageEnv}.tmp ${garageEnv}
          '';
        };

        # Layout, bucket and the tier's key, each made only if missing. Garage may still be
        # starting: the unit fails and systemd tries again.
        systemd.services.cim-garage-setup = {
          description = "CIM: Garage layout, the warm tier's bucket and its S3 key";
          # Wants, not Requires: stopping Garage must not take the tier container down with it
          # (its reads then fail cleanly and resume when Garage is back).
          wants = [ "garage.service" ];
          after = [ "garage.service" ];
          before = [ "container@cim-tier.service" ];
          wantedBy = [ "multi-user.target" "container@cim-tier.service" ];
          startLimitIntervalSec = 0;
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            Restart = "on-failure";
            RestartSec = 2;
            EnvironmentFile = garageEnv;
            UMask = "0077";
          };
          script = ''
            set -euo pipefail
            garage() { ${garageCli} "$@"; }
            garage status >/dev/null
            # Captured first: grep -q would stop reading early, and pipefail would see garage fail.
            layout=$(garage layout show)
            if printf '%s\n' "$layout" | grep -qiE 'current cluster layout version: *0\b'; then
              garage layout assign -z cim -c ${garage.capacity} "$(garage node id -q | cut -d@ -f1)"
              garage layout apply --version 1
            fi
            garage bucket info ${garage.bucket} >/dev/null 2>&1 || garage bucket create ${garage.bucket}
            # A key file left from a Garage whose data was wiped names a key it no longer has.
            if [ ! -s ${garageKeyFile} ] || ! garage key info cim-tier >/dev/null 2>&1; then
              # A key whose file was lost cannot be read back in v2: make a new one.
              garage key delete --yes cim-tier >/dev/null 2>&1 || true
              out=$(garage key create cim-tier)
              id=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*Key ID:[[:space:]]*//p')
              secret=$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*Secret key:[[:space:]]*//p')
              [ -n "$id" ] && [ -n "$secret" ] || { echo "garage key create printed no key (Garage changed its output?)" >&2; exit 1; }
              printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$id" "$secret" > ${garageKeyFile}.tmp
              mv ${garageKeyFile}.tmp ${garageKeyFile}
            fi
            garage bucket allow --read --write ${garage.bucket} --key cim-tier >/dev/null
          '';
        };
      })
    ]
  );
}
