# Provisioning: at activation a oneshot unit runs `cim provision` with the spec rendered
# here, creating or updating every stream, consumer and bucket. Re-running it is harmless:
# provisioning is idempotent, so it runs on every node of a cluster as well.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.cim;
  cfg = top.provision;
  fmt = pkgs.formats.json { };
  secrets = import ./secrets.nix { inherit lib; };

  # The core streams and buckets are added by `cim provision` itself (include_core).
  spec = {
    inherit (cfg) replicas;
    include_core = true;
    inherit (cfg)
      streams
      consumers
      kv
      objects
      ;
  };
  specFile = fmt.generate "cim-provision.json" spec;

  tls = top.nats.tls.client;
  scheme = if tls.certFile != null then "tls" else "nats";
  # With TLS the server certificate must name `localhost`.
  server = "${scheme}://${if tls.certFile != null then "localhost" else "127.0.0.1"}:${toString top.nats.port}";

  resourceList =
    what:
    lib.mkOption {
      type = lib.types.listOf fmt.type;
      default = [ ];
      description = "Extra ${what}, in the form `cim provision` reads (see `cim provision --print`).";
    };
in
{
  options.services.cim.provision = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Run `cim provision` at activation (needs {option}`services.cim.provision.adminSeedFile`).";
    };

    adminSeedFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-admin.nk";
      description = ''
        File holding the operator's nkey seed (`cim keys new admin`); its public key is
        {option}`services.cim.nats.adminPublicKey`.
      '';
    };

    replicas = lib.mkOption {
      type = lib.types.ints.between 1 5;
      default = if top.topology == "cluster" then 3 else 1;
      defaultText = lib.literalMD "`3` on a cluster, `1` on a leaf";
      description = "Replicas of every stream and bucket that does not set its own.";
    };

    streams = resourceList "streams";
    consumers = resourceList "consumers";
    kv = resourceList "key-value buckets";
    objects = resourceList "object store buckets";

    specFile = lib.mkOption {
      type = lib.types.path;
      readOnly = true;
      default = specFile;
      defaultText = lib.literalMD "the rendered spec";
      description = "The rendered provisioning spec, for `cim provision --spec` by hand.";
    };
  };

  config = lib.mkIf (top.enable && cfg.enable) {
    services.cim.keys.required.cim-provision.files = map toString (
      lib.filter (f: f != null) [
        cfg.adminSeedFile
        tls.caFile
      ]
    );

    systemd.services.cim-provision = {
      description = "CIM: create or update streams, consumers and buckets";
      wantedBy = [ "multi-user.target" ];
      requires = [ "nats.service" ];
      after = [ "nats.service" ];
      # A changed spec is applied on the next switch.
      restartTriggers = [ specFile ];
      # On a cluster the first try can come before the other nodes; keep trying.
      startLimitIntervalSec = 0;
      environment.CIM_TIMEOUT = "30";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        Restart = "on-failure";
        RestartSec = 5;
        LoadCredential =
          lib.optional (cfg.adminSeedFile != null) "admin:${toString cfg.adminSeedFile}"
          ++ lib.optional (tls.caFile != null) "ca:${toString tls.caFile}";
        ExecStart = lib.concatStringsSep " " (
          [
            "${top.package}/bin/cim"
            "--server"
            server
          ]
          ++ lib.optionals (cfg.adminSeedFile != null) [
            "--nkey"
            "%d/admin"
          ]
          ++ lib.optionals (tls.caFile != null) [
            "--tls-ca"
            "%d/ca"
          ]
          ++ [
            "provision"
            "--spec"
            "${specFile}"
          ]
        );
        DynamicUser = true;
        CapabilityBoundingSet = "";
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateTmp = true;
        ProtectHome = true;
        ProtectSystem = "strict";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
      };
    };
  };
}
