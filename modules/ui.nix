# The `ui` capability: the web dashboard, live over Server-Sent Events. Its port is
# forwarded on the host, optionally behind nginx with ACME. The password hashes and the
# session key are files, handed to the agent as systemd credentials; behind nginx the
# dashboard can instead trust a header naming the user nginx let in.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.cim.ui;
  secrets = import ./secrets.nix { inherit lib; };
  credentialPath = id: "/run/credentials/cim-agent.service/${id}";
  opt = "services.cim.ui";
  vhost = cfg.nginx.virtualHost;
in
{
  imports = [
    (import ./capability.nix {
      name = "ui";
      extraSecretFiles = {
        passwords = "the `user:scrypt$...` lines (set through `services.cim.ui.passwordFile`)";
        session-secret = "the session cookie key (set through `services.cim.ui.sessionSecretFile`)";
      };
    })
    (import ./web.nix {
      name = "ui";
      defaultPort = 8470;
      what = "the dashboard";
    })
  ];

  options.services.cim.ui = {
    passwordFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-ui-users";
      description = ''
        File outside the Nix store of `user:scrypt$...` lines, one per user; make a hash
        with `cim ui hash-password`.
      '';
    };

    sessionSecretFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-ui-session";
      description = ''
        File outside the Nix store with the key that signs session cookies
        (e.g. `head -c 32 /dev/urandom | base64`). Unset, the agent makes one at each start,
        which logs everyone out on a restart.
      '';
    };

    trustedHeader = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "X-Remote-User";
      description = ''
        Header naming the logged-in user, set by an authenticating reverse proxy and believed
        only from `settings.trusted_proxies`. With {option}`${opt}.nginx.enable` the
        proxy is this host's nginx: it sets the header to the user its HTTP basic auth
        ({option}`${opt}.nginx.basicAuthFile`) let in, replacing whatever a client sent, and
        `trusted_proxies` defaults to the host's end of the container link (where nginx's
        connections come from; so does any other process on this host that connects).
      '';
    };

    nginx.basicAuthFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-ui-htpasswd";
      description = ''
        htpasswd file outside the Nix store for nginx's HTTP basic auth in front of the
        dashboard (nixpkgs' `basicAuthFile`); the user it lets in reaches the dashboard in
        {option}`${opt}.trustedHeader`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.cim.ui.secretFiles = {
      passwords = cfg.passwordFile;
      session-secret = cfg.sessionSecretFile;
    };

    services.cim.ui.settings = lib.mkMerge [
      {
        password_file = lib.mkIf (cfg.passwordFile != null) (credentialPath "passwords");
        session_secret_file = lib.mkIf (cfg.sessionSecretFile != null) (credentialPath "session-secret");
        trusted_header = lib.mkIf (cfg.trustedHeader != null) cfg.trustedHeader;
      }
      (lib.mkIf (cfg.nginx.enable && cfg.nginx.virtualHost != null) {
        # nginx's connections arrive from the host's end of the link; it sets X-Forwarded-Host.
        trusted_proxies = lib.mkDefault [ cfg.hostAddress ];
        secure_cookies = lib.mkDefault cfg.nginx.forceSSL;
      })
    ];

    # nginx reads the htpasswd file itself, as user nginx, on every request; /run/keys is
    # 0750 root:keys on NixOS, so nginx joins `keys` (colmena's advice for such services).
    services.cim.keys.required.nginx = lib.mkIf (cfg.nginx.enable && cfg.nginx.basicAuthFile != null) {
      files = [ (toString cfg.nginx.basicAuthFile) ];
      user = config.services.nginx.user;
    };
    users.users = lib.mkIf (cfg.nginx.enable && cfg.nginx.basicAuthFile != null) {
      ${config.services.nginx.user}.extraGroups = [ "keys" ];
    };

    services.nginx.virtualHosts = lib.mkIf (cfg.nginx.enable && cfg.nginx.virtualHost != null) {
      ${vhost} = {
        basicAuthFile = lib.mkIf (cfg.nginx.basicAuthFile != null) cfg.nginx.basicAuthFile;
        locations."/".extraConfig = lib.mkIf (cfg.trustedHeader != null) ''
          proxy_set_header ${cfg.trustedHeader} $remote_user;
        '';
        # The live events: Server-Sent Events must not wait in nginx's buffer. HTTP/1.1 to
        # the agent (via proxyWebsockets) keeps the stream chunked.
        locations."/events/stream" = {
          proxyPass = "http://${cfg.localAddress}:${toString cfg.settings.http.port}";
          proxyWebsockets = true;
          recommendedProxySettings = true;
          extraConfig = ''
            proxy_buffering off;
            proxy_cache off;
          ''
          + lib.optionalString (cfg.trustedHeader != null) ''
            proxy_set_header ${cfg.trustedHeader} $remote_user;
          '';
        };
      };
    };

    assertions = [
      {
        assertion = cfg.passwordFile != null || cfg.trustedHeader != null;
        message = "${opt}: the dashboard needs a login. Set ${opt}.passwordFile to a file of `user:scrypt$...` lines (`cim ui hash-password`), or ${opt}.trustedHeader behind an authenticating proxy.";
      }
      {
        assertion = !(cfg.nginx.enable && cfg.trustedHeader != null) || cfg.nginx.basicAuthFile != null;
        message = "${opt}.trustedHeader is set behind this host's nginx, but ${opt}.nginx.basicAuthFile is not: nginx would let anyone in without a user. Set ${opt}.nginx.basicAuthFile to an htpasswd file outside the Nix store.";
      }
    ]
    ++ map (m: {
      assertion = false;
      message = m;
    }) (
      lib.filter (m: m != null) [
        (secrets.fileProblem "${opt}.passwordFile" cfg.passwordFile)
        (secrets.fileProblem "${opt}.sessionSecretFile" cfg.sessionSecretFile)
        (secrets.fileProblem "${opt}.nginx.basicAuthFile" cfg.nginx.basicAuthFile)
      ]
    );
  };
}
