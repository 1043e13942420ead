# NATS on the host: nixpkgs' services.nats, configured for CIM. JetStream, cluster routes
# from the node list, a leafnode remote to a hub, TLS, monitoring, and one nkey user per
# agent whose permissions are exactly what its capability declares.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.cim;
  cfg = top.nats;
  hub = cfg.hub;
  secrets = import ./secrets.nix { inherit lib; };

  isCluster = top.topology == "cluster";
  # Each node routes to every other node, never to itself.
  otherNodes = builtins.filter (node: node.name != top.nodeName) top.cluster.nodes;

  # Secret and TLS files reach nats-server through systemd credentials: root reads them
  # (they are usually root-only, 0600), the hardened `nats` user sees a private copy here.
  credentialDir = "/run/credentials/nats.service";

  tlsOptions = kind: {
    certFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/nats-${kind}.crt";
      description = "Certificate (PEM) for ${kind} connections. TLS is on for them when this and the key are set.";
    };
    keyFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/nats-${kind}.key";
      description = "Private key (PEM) of {option}`services.cim.nats.tls.${kind}.certFile`. A path outside the Nix store.";
    };
    caFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      description = "CA certificate (PEM) that the other side's certificate must chain to.";
    };
    verify = lib.mkOption {
      type = lib.types.bool;
      # Routes and leafnodes are server-to-server: both sides should prove who they are.
      default = kind != "client";
      defaultText = lib.literalMD "`true` for routes and leafnodes, `false` for clients";
      description = "Require and verify a certificate from the other side (mutual TLS); needs `caFile`.";
    };
  };

  tlsOn = t: t.certFile != null;
  anyTls = lib.any tlsOn [
    cfg.tls.client
    cfg.tls.route
    cfg.tls.leafnode
  ];
  tlsBlock =
    kind: t:
    lib.optionalAttrs (tlsOn t) {
      tls =
        {
          cert_file = "${credentialDir}/${kind}-cert";
          key_file = "${credentialDir}/${kind}-key";
        }
        // lib.optionalAttrs (t.caFile != null) {
          ca_file = "${credentialDir}/${kind}-ca";
          inherit (t) verify;
        };
    };
  tlsCredentials =
    kind: t:
    lib.optionals (tlsOn t) [
      "${kind}-cert:${toString t.certFile}"
      "${kind}-key:${toString t.keyFile}"
    ]
    ++ lib.optional (tlsOn t && t.caFile != null) "${kind}-ca:${toString t.caFile}";

  users =
    lib.attrValues cfg.agentUsers
    # The operator: the `cim` CLI and provisioning. Unrestricted inside the CIM account.
    ++ lib.optional (cfg.adminPublicKey != null) { nkey = cfg.adminPublicKey; }
    # Leaf nodes attached to this server log in as users of the same account.
    ++ map (key: { nkey = key; }) cfg.leafnodes.publicKeys;

  hasRemote = hub.urls != [ ];
  hubSeed = hasRemote && hub.nkeySeedFile != null;
  routePassword = isCluster && top.cluster.routePasswordFile != null;
  routeUser = "cim-route";
  settingsFile = (pkgs.formats.json { }).generate "nats.conf" config.services.nats.settings;
  # The hub seed and the route password are secrets: they are spliced into a copy of the
  # config under /run at start, so neither they nor a config holding them is in the store.
  withSecrets = pkgs.writeShellScript "cim-nats-config" ''
    set -euo pipefail
    ${pkgs.jq}/bin/jq \
      ${lib.optionalString hubSeed ''--rawfile seed "$CREDENTIALS_DIRECTORY/hub-seed" ''}\
      ${lib.optionalString routePassword ''--rawfile route "$CREDENTIALS_DIRECTORY/route-password" ''}\
      ${lib.escapeShellArg (
        lib.concatStringsSep " | " (
          [ "." ]
          ++ lib.optional hubSeed ''.leafnodes.remotes |= map(.nkey = ($seed | gsub("\\s"; "")))''
          ++ lib.optional routePassword ''($route | sub("\\s+$"; "")) as $pw | .cluster.authorization.password = $pw | .cluster.routes |= map(sub("^nats-route://"; "nats-route://${routeUser}:" + ($pw | @uri) + "@"))''
        )
      )} \
      ${settingsFile} > "$RUNTIME_DIRECTORY/nats.conf"
  '';

  # Secret and TLS files nats-server reads, for modules/keys.nix.
  secretFiles = lib.filter (f: f != null) (
    lib.concatMap (t: [ t.certFile t.keyFile t.caFile ]) [ cfg.tls.client cfg.tls.route cfg.tls.leafnode ]
    ++ [ (if hubSeed then hub.nkeySeedFile else null) (if routePassword then top.cluster.routePasswordFile else null) ]
  );

  # The other nodes may reach the route port, nobody else.
  otherAddresses = map (node: node.address) otherNodes;
  isIPv6 = lib.hasInfix ":";
  isIPv4 = a: builtins.match "[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+(/[0-9]+)?" a != null;
  # An IP opens the port to it; a DNS name is resolved by iptables when the firewall starts,
  # for both families, and a name that does not resolve then leaves the port closed to it
  # with a message, instead of aborting the firewall script.
  routeRule = cmd: address: "${cmd} -w -I nixos-fw -p tcp -s ${address} --dport ${toString top.cluster.routePort} -j nixos-fw-accept";
  routeRulesIptables = lib.concatMapStrings (
    address:
    if isIPv6 address then
      "${routeRule "ip6tables" address}\n"
    else if isIPv4 address then
      "${routeRule "iptables" address}\n"
    else
      lib.concatMapStrings (cmd: "${routeRule cmd address} 2>/dev/null || echo 'cim: ${address} does not resolve (${cmd}); the NATS route port stays closed to it' >&2\n") [ "iptables" "ip6tables" ]
  ) otherAddresses;
  routeRulesNftables = lib.concatMapStrings (
    address: "${if isIPv6 address then "ip6" else "ip"} saddr ${address} tcp dport ${toString top.cluster.routePort} accept\n"
  ) otherAddresses;
in
{
  options.services.cim.nats = {
    listenAddress = lib.mkOption {
      type = lib.types.str;
      default = "0.0.0.0";
      description = ''
        Address NATS listens on for clients. The containers reach it through their private
        links; the firewall opens the client port only on those links unless
        {option}`services.cim.nats.openFirewall` is set.
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 4222;
      description = "Client port.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the client port on every interface, for `cim` on other machines.";
    };

    monitorAddress = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address of the HTTP monitoring endpoint (`/varz`, `/jsz`, `/healthz`).";
    };

    monitorPort = lib.mkOption {
      type = lib.types.nullOr lib.types.port;
      default = 8222;
      description = "Port of the HTTP monitoring endpoint; `null` turns it off.";
    };

    jetstream = {
      storeDir = lib.mkOption {
        type = lib.types.path;
        default = "/var/lib/nats";
        description = "Where JetStream keeps streams, objects and its metadata.";
      };
      maxMemory = lib.mkOption {
        type = lib.types.str;
        default = "1G";
        description = "Most memory all in-memory streams may use (`max_memory_store`).";
      };
      maxFile = lib.mkOption {
        type = lib.types.str;
        default = "10G";
        description = "Most disk all file streams may use (`max_file_store`).";
      };
      domain = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = if hasRemote then top.nodeName else null;
        defaultText = lib.literalMD "this node's name when it has a hub, else `null`";
        description = ''
          JetStream domain. A leaf with its own JetStream needs a domain of its own so its
          streams stay apart from the hub's.
        '';
      };
    };

    tls = {
      client = tlsOptions "client";
      route = tlsOptions "route";
      leafnode = tlsOptions "leafnode";
    };

    adminPublicKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
      description = ''
        Public nkey of the operator, used by the `cim` CLI and by provisioning. Make one
        with `cim keys new admin`; its seed stays in a file
        ({option}`services.cim.provision.adminSeedFile`).
      '';
    };

    leafnodes = {
      port = lib.mkOption {
        type = lib.types.nullOr lib.types.port;
        default = if isCluster then 7422 else null;
        defaultText = lib.literalMD "`7422` on a cluster, else `null`";
        description = "Port on which leaf nodes attach to this server (opened in the firewall); `null` accepts none.";
      };
      publicKeys = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Public nkeys of the leaf nodes allowed to attach (their {option}`services.cim.nats.hub.nkeySeedFile`).";
      };
    };

    agentUsers = lib.mkOption {
      type = lib.types.attrsOf (pkgs.formats.json { }).type;
      default = { };
      internal = true;
      description = "One NATS user per enabled capability, set by the capability modules.";
    };
  };

  options.services.cim.nats.hub = {
    urls = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "nats-leaf://10.0.0.11:7422"
        "nats-leaf://10.0.0.12:7422"
      ];
      description = "Leafnode URLs of a hub (e.g. the cluster) that this leaf attaches to.";
    };
    nkeySeedFile = lib.mkOption {
      type = secrets.fileType;
      default = null;
      example = "/run/keys/cim-hub.nk";
      description = ''
        File holding this leaf's nkey seed for the hub; its public key goes into the hub's
        {option}`services.cim.nats.leafnodes.publicKeys`.
      '';
    };
  };

  config = lib.mkIf top.enable {
    services.nats = {
      enable = true;
      jetstream = true;
      serverName = top.nodeName;
      inherit (cfg) port;
      dataDir = cfg.jetstream.storeDir;
      # nats-server -t at build time cannot see files that only exist on the host.
      validateConfig = lib.mkDefault (!anyTls);
      settings = lib.mkMerge [
        {
          host = cfg.listenAddress;
          jetstream =
            {
              max_memory_store = cfg.jetstream.maxMemory;
              max_file_store = cfg.jetstream.maxFile;
            }
            // lib.optionalAttrs (cfg.jetstream.domain != null) { inherit (cfg.jetstream) domain; };
          accounts.CIM = {
            jetstream = "enabled";
            inherit users;
          };
        }
        (lib.mkIf (cfg.monitorPort != null) { http = "${cfg.monitorAddress}:${toString cfg.monitorPort}"; })
        (tlsBlock "client" cfg.tls.client)
        (lib.mkIf isCluster {
          cluster = {
            inherit (top.cluster) name;
            port = top.cluster.routePort;
            routes = map (node: "nats-route://${node.address}:${toString top.cluster.routePort}") otherNodes;
          }
          // lib.optionalAttrs routePassword {
            # The password itself is added at start (withSecrets).
            authorization.user = routeUser;
          }
          // tlsBlock "route" cfg.tls.route;
        })
        (lib.mkIf (cfg.leafnodes.port != null || hasRemote) {
          leafnodes =
            lib.optionalAttrs (cfg.leafnodes.port != null) ({ inherit (cfg.leafnodes) port; } // tlsBlock "leafnode" cfg.tls.leafnode)
            // lib.optionalAttrs hasRemote {
              remotes = [
                ({
                  inherit (hub) urls;
                  # Messages from the hub arrive in the same account the agents use.
                  account = "CIM";
                } // tlsBlock "leafnode" cfg.tls.leafnode)
              ];
            };
        })
      ];
    };

    systemd.services.nats.serviceConfig = lib.mkMerge [
      {
        LoadCredential =
          tlsCredentials "client" cfg.tls.client
          ++ tlsCredentials "route" cfg.tls.route
          ++ tlsCredentials "leafnode" cfg.tls.leafnode
          ++ lib.optional hubSeed "hub-seed:${toString hub.nkeySeedFile}"
          ++ lib.optional routePassword "route-password:${toString top.cluster.routePasswordFile}";
      }
      (lib.mkIf (hubSeed || routePassword) {
        RuntimeDirectory = "cim-nats";
        RuntimeDirectoryMode = "0700";
        ExecStartPre = [ withSecrets ];
        ExecStart = lib.mkForce "${pkgs.nats-server}/bin/nats-server -c /run/cim-nats/nats.conf";
      })
    ];

    services.cim.keys.required.nats.files = map toString secretFiles;

    # nixpkgs' services.nats makes only its default dataDir (StateDirectory); it needs any
    # other to exist, owned by its user (ReadWritePaths under ProtectSystem=strict).
    systemd.tmpfiles.rules = lib.optional (
      cfg.jetstream.storeDir != "/var/lib/nats"
    ) "d ${toString cfg.jetstream.storeDir} 0750 ${config.services.nats.user} ${config.services.nats.group} - -";

    # After a write failed for lack of space, nats-server keeps failing writes, even once space
    # is freed, until it restarts (cim.disk_full). This reads its journal, says when the disk
    # filled, and restarts nats.service once space is back. journalctl and systemctl are on
    # every NixOS service's default path.
    systemd.services.cim-nats-disk-watch = {
      description = "CIM: restart nats-server once its full disk has room again";
      wantedBy = [ "multi-user.target" ];
      after = [ "nats.service" ];
      serviceConfig = {
        ExecStart = "${top.package}/bin/cim nats disk-watch --store-dir ${toString cfg.jetstream.storeDir}";
        Restart = "always";
        RestartSec = 5;
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectHome = true;
        ProtectSystem = "strict";
      };
    };

    networking.firewall.allowedTCPPorts =
      lib.optional (cfg.leafnodes.port != null) cfg.leafnodes.port ++ lib.optional cfg.openFirewall cfg.port;
    networking.firewall.extraCommands = lib.mkIf (isCluster && !config.networking.nftables.enable) routeRulesIptables;
    networking.firewall.extraInputRules = lib.mkIf (isCluster && config.networking.nftables.enable) routeRulesNftables;

    # The operator's `cim` on the host.
    environment.systemPackages = [ top.package ];
  };
}
