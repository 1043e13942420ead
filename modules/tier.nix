# The `tier` capability: units move JetStream -> MinIO -> Wasabi by policy, reads go through
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
          description = "S3 endpoint URL (MinIO, Wasabi); AWS when null.";
        };
        region = lib.mkOption {
          type = lib.types.str;
          default = "us-east-1";
          description = "S3 region.";
        };
        addressingStyle = lib.mkOption {
          type = lib.types.enum [ "path" "virtual" "auto" ];
          default = "path";
          description = "S3 addressing style (`path` for MinIO).";
        };
        credentialsFile = lib.mkOption {
          type = secrets.fileType;
          default = null;
          example = "/run/keys/cim-minio.env";
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
  minioPort = lib.toInt (lib.last (lib.splitString ":" cfg.minio.listenAddress));
in
{
  imports = [
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
        { warm = { url = "s3://cim-warm/units"; endpoint = "http://10.233.2.1:9000"; credentialsFile = "/run/keys/minio.env"; }; }
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

    minio = {
      enable = lib.mkEnableOption "MinIO on this host (nixpkgs' `services.minio`) as the `warm` tier, its bucket created at activation";
      rootCredentialsFile = lib.mkOption {
        type = secrets.fileType;
        default = null;
        example = "/run/keys/cim-minio.env";
        description = "MinIO's root credentials (`MINIO_ROOT_USER=`, `MINIO_ROOT_PASSWORD=`), outside the Nix store; the agent uses the same file.";
      };
      bucket = lib.mkOption {
        type = lib.types.str;
        default = "cim-warm";
        description = "The bucket of the `warm` tier, created at activation.";
      };
      listenAddress = lib.mkOption {
        type = lib.types.str;
        default = ":9000";
        description = "MinIO's `services.minio.listenAddress`; the agent reaches it over the container's link.";
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
          {
            assertion = !cfg.minio.enable || cfg.minio.rootCredentialsFile != null;
            message = "services.cim.tier.minio.rootCredentialsFile must name MinIO's root credentials file (MINIO_ROOT_USER=, MINIO_ROOT_PASSWORD=).";
          }
        ]
        ++ lib.mapAttrsToList (name: t: {
          assertion = !(lib.hasPrefix "s3://" t.url) || t.credentialsFile != null;
          message = "services.cim.tier.tiers.${name}.credentialsFile must name the file with its S3 keys.";
        }) cfg.tiers;
      }

      (lib.mkIf cfg.minio.enable {
        services.minio = {
          enable = true;
          inherit (cfg.minio) rootCredentialsFile listenAddress;
          browser = lib.mkDefault false;
        };
        services.cim.tier.tiers.warm = {
          url = lib.mkDefault "s3://${cfg.minio.bucket}/units";
          endpoint = lib.mkDefault "http://${cfg.hostAddress}:${toString minioPort}";
          credentialsFile = lib.mkDefault cfg.minio.rootCredentialsFile;
          order = lib.mkDefault 10;
        };
        # Only the tier container reaches MinIO, over its private link.
        networking.firewall.interfaces."ve-cim-tier".allowedTCPPorts = [ minioPort ];

        # The bucket exists before the agent needs it; creating it again is harmless.
        systemd.services.cim-minio-bucket = {
          description = "Create the CIM warm tier bucket in MinIO";
          wantedBy = [ "multi-user.target" ];
          requires = [ "minio.service" ];
          after = [ "minio.service" ];
          before = [ "container@cim-tier.service" ];
          path = [ pkgs.minio-client ];
          script = ''
            export HOME=$RUNTIME_DIRECTORY
            for _ in $(seq 60); do
              mc alias set cim http://127.0.0.1:${toString minioPort} "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null && break
              sleep 1  # MinIO is still starting; mc has no wait of its own
            done
            mc mb --ignore-existing cim/${cfg.minio.bucket}
          '';
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            EnvironmentFile = cfg.minio.rootCredentialsFile;
            RuntimeDirectory = "cim-minio-bucket";
          };
        };
      })
    ]
  );
}
