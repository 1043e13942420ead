# The `hub` capability: the HTTP ingest API, outbound webhooks and connectors (inbox folder,
# S3 import). Its port is forwarded on the host, optionally behind nginx with ACME. Every
# secret (the bearer tokens, each webhook's HMAC secret, a connector's S3 keys) is a file:
# bind-mounted into the container, handed to the agent as a systemd credential and named in
# the settings only by its credential path.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.cim.hub;
  fmt = pkgs.formats.json { };
  secrets = import ./secrets.nix { inherit lib; };
  credentialPath = id: "/run/credentials/cim-agent.service/${id}";
  opt = "services.cim.hub";

  webhookType = lib.types.submodule {
    freeformType = fmt.type;
    options = {
      url = lib.mkOption {
        type = lib.types.str;
        example = "https://ci.example.org/hooks/cim";
        description = "Where the events are POSTed.";
      };
      secretFile = lib.mkOption {
        type = secrets.fileType;
        default = null;
        example = "/run/keys/cim-webhook-ci";
        description = "File outside the Nix store with the signing secret shared with the receiver (Standard Webhooks): `whsec_` and base64, as the receiver's library prints it, or any other bytes, used as the key itself.";
      };
    };
  };

  connectorType = lib.types.submodule {
    options = {
      plugin = lib.mkOption {
        type = lib.types.str;
        example = "s3-import";
        description = "The connector plugin: `inbox` or `s3-import`.";
      };
      settings = lib.mkOption {
        type = lib.types.submodule { freeformType = fmt.type; };
        default = { };
        description = "The plugin's settings. Secrets never go here: use `secretFiles`.";
      };
      secretFiles = lib.mkOption {
        type = lib.types.attrsOf secrets.fileType;
        default = { };
        example = lib.literalExpression ''
          {
            access_key_id_file = "/run/keys/cim-import-id";
            secret_access_key_file = "/run/keys/cim-import-secret";
          }
        '';
        description = ''
          Secret files of the plugin by settings key (a `*_file` key): each is bind-mounted
          into the container and the key set to its credential path.
        '';
      };
    };
  };

  # The folders of `inbox` connectors: the same path on the host and in the container, owned
  # by the group `cim-inbox` (the same GID on both sides: a container shares the host's ids).
  inboxGroup = "cim-inbox";
  inboxes = lib.unique (
    lib.concatLists (
      lib.mapAttrsToList (_: c: lib.optional (c.plugin == "inbox" && c.settings ? path) (toString c.settings.path)) cfg.connectors
    )
  );
  # Where the hardened unit cannot write whatever ReadWritePaths says (ProtectHome, PrivateTmp).
  hiddenFromAgent = [ "/home" "/root" "/run/user" "/tmp" "/var/tmp" "/nix/store" ];
  inboxProblem =
    path:
    if !(lib.hasPrefix "/" path) then
      "must be an absolute path"
    else
      let
        under = lib.findFirst (d: path == d || lib.hasPrefix "${d}/" path) null hiddenFromAgent;
      in
      if under != null then "is under ${under}, which the hardened agent cannot write; use e.g. /srv/cim-inbox" else null;

  webhookId = name: "webhook-${name}";
  connectorId = name: key: "connector-${name}-${key}";

in
{
  imports = [
    (import ./capability.nix {
      name = "hub";
      extraSecretFiles = {
        tokens = "the bearer tokens (set through `services.cim.hub.tokensFile`)";
        "webhook-NAME" = "signing secret of the webhook NAME (`services.cim.hub.webhooks.NAME.secretFile`)";
        "connector-NAME-KEY" = "secret file KEY of the connector NAME (`services.cim.hub.connectors.NAME.secretFiles.KEY`)";
      };
    })
    (import ./web.nix {
      name = "hub";
      defaultPort = 8471;
      what = "the ingest API";
    })
  ];

  options.services.cim.hub = {
    tokensFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-hub-tokens.json";
      description = ''
        File outside the Nix store with the API's bearer tokens:
        `{"tokens": [{"name": "ci", "token": "...", "sources": ["ci/*"], "labels": ["*"]}]}`
        (`token_sha256` may stand in for `token`).
      '';
    };

    webhooks = lib.mkOption {
      type = lib.types.attrsOf webhookType;
      default = { };
      example = lib.literalExpression ''
        {
          ci = {
            url = "https://ci.example.org/hooks/cim";
            secretFile = "/run/keys/cim-webhook-ci";
            subjects = [ "cim.evt.unit.*.created" ];
          };
        }
      '';
      description = "Outbound webhooks by name: `url`, `secretFile`, and the agent's other keys (`subjects`, `max_attempts`, `backoff`, `timeout`).";
    };

    connectors = lib.mkOption {
      type = lib.types.attrsOf connectorType;
      default = { };
      example = lib.literalExpression ''
        {
          bucket = {
            plugin = "s3-import";
            settings = { bucket = "scans"; endpoint_url = "https://s3.example.org"; interval = 300; };
            secretFiles = {
              access_key_id_file = "/run/keys/cim-import-id";
              secret_access_key_file = "/run/keys/cim-import-secret";
            };
          };
        }
      '';
      description = ''
        Connectors by name: the plugin, its settings, and its secret files. An `inbox`
        connector's `settings.path` (absolute, e.g. `/srv/cim-inbox`) is made on the host
        with `done/` and `failed/`, owned by the group `cim-inbox` (mode 2770), bind-mounted
        read-write at the same path into the container and writable by the agent; users
        who drop files there join `cim-inbox`.
      '';
    };

    inboxGid = lib.mkOption {
      type = lib.types.int;
      default = 8471;
      description = ''
        GID of the group `cim-inbox` that owns the folders of `inbox` connectors, on the host
        and in the hub's container (the same number on both sides). The agent, a
        DynamicUser, gets it as a supplementary group.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.cim.hub.secretFiles =
      { tokens = cfg.tokensFile; }
      // lib.mapAttrs' (name: w: lib.nameValuePair (webhookId name) w.secretFile) cfg.webhooks
      // lib.concatMapAttrs (
        name: c: lib.mapAttrs' (key: file: lib.nameValuePair (connectorId name key) file) c.secretFiles
      ) cfg.connectors;

    services.cim.hub.settings = {
      tokens_file = lib.mkIf (cfg.tokensFile != null) (credentialPath "tokens");
      webhooks = lib.mkIf (cfg.webhooks != { }) (
        lib.mapAttrsToList (
          name: w:
          builtins.removeAttrs w [ "secretFile" ]
          // {
            inherit name;
            secret_file = credentialPath (webhookId name);
          }
        ) cfg.webhooks
      );
      connectors = lib.mkIf (cfg.connectors != { }) (
        lib.mapAttrsToList (name: c: {
          inherit name;
          inherit (c) plugin;
          settings = c.settings // lib.mapAttrs (key: _: credentialPath (connectorId name key)) c.secretFiles;
        }) cfg.connectors
      );
    };

    # Inbox folders: made on the host, mounted read-write, writable by the agent through the
    # group (its DynamicUser's UID may change between starts; the setgid folders keep the
    # group on everything made inside). Kept apart from ProtectSystem=strict by ReadWritePaths.
    users.groups = lib.mkIf (inboxes != [ ]) { ${inboxGroup}.gid = cfg.inboxGid; };
    systemd.tmpfiles.rules = lib.concatMap (
      path: map (d: "d ${d} 2770 root ${inboxGroup} - -") [ path "${path}/done" "${path}/failed" ]
    ) inboxes;
    containers.cim-hub = lib.mkIf (inboxes != [ ]) {
      bindMounts = lib.genAttrs inboxes (path: {
        hostPath = path;
        isReadOnly = false;
      });
      config = {
        users.groups.${inboxGroup}.gid = cfg.inboxGid;
        systemd.services.cim-agent.serviceConfig = {
          ReadWritePaths = inboxes;
          SupplementaryGroups = [ inboxGroup ];
        };
      };
    };

    # The body limit of nginx follows the agent's, which answers 413 itself above it.
    services.nginx.virtualHosts = lib.mkIf (cfg.nginx.enable && cfg.nginx.virtualHost != null) {
      ${cfg.nginx.virtualHost}.locations."/".extraConfig = ''
        client_max_body_size ${toString (cfg.settings.max_body_size or (64 * 1024 * 1024))};
        proxy_request_buffering off;
      '';
    };

    assertions =
      [
        {
          assertion = cfg.tokensFile != null;
          message = "${opt}.tokensFile is not set: the ingest API has no tokens. Write a JSON file of tokens outside the Nix store (e.g. /run/keys/cim-hub-tokens.json) and set ${opt}.tokensFile to its path.";
        }
      ]
      ++ lib.mapAttrsToList (name: w: {
        assertion = w.secretFile != null;
        message = "${opt}.webhooks.${name}.secretFile is not set: the receiver could not tell our deliveries from forged ones. Put the shared HMAC secret in a file outside the Nix store and give its path.";
      }) cfg.webhooks
      ++ lib.mapAttrsToList (name: c: {
        assertion = c.plugin != "inbox" || c.settings ? path;
        message = "${opt}.connectors.${name}.settings.path is not set: an inbox connector needs its folder (e.g. /srv/cim-inbox).";
      }) cfg.connectors
      ++ map (path: {
        assertion = inboxProblem path == null;
        message = "${opt}.connectors: the inbox folder ${path} ${toString (inboxProblem path)}.";
      }) inboxes
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: c:
          map (key: {
            assertion = lib.hasSuffix "_file" key;
            message = "${opt}.connectors.${name}.secretFiles.${key}: secret files go to `*_file` settings keys (e.g. secret_access_key_file); rename the key.";
          }) (builtins.attrNames c.secretFiles)
        ) cfg.connectors
      )
      ++ map (m: {
        assertion = false;
        message = m;
      }) (
        lib.filter (m: m != null) (
          [ (secrets.fileProblem "${opt}.tokensFile" cfg.tokensFile) ]
          ++ lib.mapAttrsToList (name: w: secrets.fileProblem "${opt}.webhooks.${name}.secretFile" w.secretFile) cfg.webhooks
          ++ lib.concatLists (
            lib.mapAttrsToList (
              name: c: lib.mapAttrsToList (key: secrets.fileProblem "${opt}.connectors.${name}.secretFiles.${key}") c.secretFiles
            ) cfg.connectors
          )
        )
      );
  };
}
