# What the capabilities that serve HTTP (hub, ui) share: the agent listens inside its
# container on `settings.http.port`, the port is forwarded on the host, and an optional
# nginx virtual host with ACME proxies to the container over its private link.
# `import ./web.nix { name = "ui"; defaultPort = 8470; what = "the dashboard"; }` next to
# `import ./capability.nix { ... }`.
{
  name,
  defaultPort,
  what,
}:
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.cim.${name};
  opt = "services.cim.${name}";
  containerName = "cim-${name}";
  port = cfg.settings.http.port;
  # nginx on the host reaches the agent directly over the link, not through the forwarded
  # port: systemd-nspawn's DNAT rules skip connections to the host's own loopback.
  upstream = "http://${cfg.localAddress}:${toString port}";
in
{
  options.services.cim.${name} = {
    port = lib.mkOption {
      type = lib.types.port;
      default = defaultPort;
      description = ''
        Port ${what} listens on inside the container (it binds `0.0.0.0` there, so the host
        reaches it over the container's link). Written into `settings.http.port`.
      '';
    };

    hostPort = lib.mkOption {
      type = lib.types.nullOr lib.types.port;
      default = if cfg.openFirewall && !cfg.nginx.enable then cfg.port else null;
      defaultText = lib.literalMD "{option}`${opt}.port` when {option}`${opt}.openFirewall` is set and nginx does not front ${what}, else `null`";
      description = ''
        Port on the host forwarded to ${what} in the container (nixos-containers'
        `forwardPorts`), or `null` for none. systemd-nspawn forwards it with a DNAT rule that
        the host's firewall does not filter (the packets pass FORWARD, not INPUT), so a
        forwarded port is open to the network whatever the firewall says: it is forwarded
        only with {option}`${opt}.openFirewall`, and never by default behind nginx, whose TLS
        and login it would bypass. On the host itself ${what} is always at
        `http://''${localAddress}:''${port}`.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open {option}`${opt}.hostPort` in the host's firewall, and ports 80 and 443 when
        {option}`${opt}.nginx.enable` is set.
      '';
    };

    nginx = {
      enable = lib.mkEnableOption "an nginx virtual host on this host in front of ${what} (nixpkgs' `services.nginx`)";

      virtualHost = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "cim.example.org";
        description = "Domain name of the virtual host (the attribute of `services.nginx.virtualHosts`).";
      };

      enableACME = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = ''
          Get a Let's Encrypt certificate for the virtual host (nixpkgs' `enableACME`). nixpkgs
          then requires `security.acme.acceptTerms = true` and `security.acme.defaults.email`.
        '';
      };

      forceSSL = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Redirect plain HTTP to HTTPS (nixpkgs' `forceSSL`; needs a certificate, e.g. from {option}`${opt}.nginx.enableACME`).";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        services.cim.${name}.settings.http = {
          host = lib.mkDefault "0.0.0.0";
          port = lib.mkDefault cfg.port;
        };

        containers.${containerName} = {
          forwardPorts = lib.optional (cfg.hostPort != null) {
            protocol = "tcp";
            inherit (cfg) hostPort;
            containerPort = port;
          };
          config.networking.firewall.allowedTCPPorts = [ port ];
        };

        networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (
          lib.optional (cfg.hostPort != null) cfg.hostPort ++ lib.optionals cfg.nginx.enable [ 80 443 ]
        );
      }

      {
        assertions = [
          {
            assertion = cfg.hostPort == null || cfg.openFirewall;
            message = "${opt}.hostPort = ${toString cfg.hostPort} is forwarded to the container with a DNAT rule that the firewall does not filter, so it would be open to the network although ${opt}.openFirewall is false${lib.optionalString cfg.nginx.enable ", bypassing nginx's TLS and login"}. Set ${opt}.openFirewall = true if the network may reach it, or ${opt}.hostPort = null (on the host it stays at http://${cfg.localAddress}:${toString port}).";
          }
          {
            assertion = !cfg.nginx.enable || cfg.nginx.virtualHost != null;
            message = "${opt}.nginx.enable is set but ${opt}.nginx.virtualHost is not: nginx needs the domain name to serve ${what} on. Set it, e.g. \"cim.example.org\".";
          }
        ];
      }

      (lib.mkIf (cfg.nginx.enable && cfg.nginx.virtualHost != null) {
        services.nginx = {
          enable = true;
          recommendedTlsSettings = lib.mkDefault true;
          virtualHosts.${cfg.nginx.virtualHost} = {
            inherit (cfg.nginx) enableACME forceSSL;
            locations."/" = {
              proxyPass = upstream;
              # Host and X-Forwarded-* reach the agent, which checks the Origin against them.
              recommendedProxySettings = true;
            };
          };
        };
      })
    ]
  );
}
