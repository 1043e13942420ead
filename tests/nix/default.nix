# Evaluation tests of the CIM modules (no VM, no nixpkgs: only its lib).
#   nix-instantiate --eval --strict --json tests/nix --arg lib 'import <lib>'
# Returns { count, failures, agentConfigs }: `failures` lists each failed test by name with
# what it got; `agentConfigs` are rendered agent configs for `cim config check`.
{
  lib ?
    let
      fromEnv = builtins.getEnv "CIM_NIXPKGS_LIB";
    in
    if fromEnv != "" then import fromEnv else import <nixpkgs/lib>,
}:
let
  h = import ./eval.nix { inherit lib; };
  flake = import ./flake-outputs.nix { inherit lib; };
  f = import ./fixtures.nix { inherit lib; };
  capabilities = import ../../modules/capabilities.nix;

  cfgOf = modules: (h.eval modules).config;
  leaf = cfgOf f.leaf;
  node = i: cfgOf (f.clusterNode i);
  attached = cfgOf f.attachedLeaf;

  # The example fleet in hosts/, without the placeholder hardware (not declared here).
  hosts = import ../../hosts;
  host = name: cfgOf (builtins.filter (m: m != ../../hosts/hardware.nix) hosts.${name}.modules);

  natsSettings = config: config.services.nats.settings;
  users = config: (natsSettings config).accounts.CIM.users;
  userKeys = config: map (u: u.nkey) (users config);
  storeContainer = config: config.containers.cim-store;
  storeUnit = config: (storeContainer config).config.systemd.services.cim-agent;
  # A leaf with the registry as well (its key made by `cim keys new registry`, seed discarded).
  registryKey = f.agentKeys.registry;
  withRegistry = cfgOf (
    f.leaf
    ++ [
      {
        services.cim.registry = {
          enable = true;
          nkeyPublicKey = registryKey;
          nkeySeedFile = "/run/keys/cim-registry.nk";
          settings = {
            stale_after = 20;
            registry.heartbeat = 2;
          };
        };
      }
    ]
  );
  registryContainer = config: config.containers.cim-registry;
  # A leaf with tiering: Garage on the host as `warm`, Wasabi as the archive, two policies.
  tierKey = f.agentKeys.tier;
  tierModules = f.leaf ++ [
      {
        services.cim.outbound = { enable = true; nameservers = [ "9.9.9.9" ]; };
        services.cim.tier = {
          enable = true;
          nkeyPublicKey = tierKey;
          nkeySeedFile = "/run/keys/cim-tier.nk";
          garage.enable = true;
          archive = {
            enable = true;
            endpoint = "https://s3.eu-central-1.wasabisys.com";
            bucket = "acme-cim";
            region = "eu-central-1";
            checksum = "sha256";
            credentialsFile = "/run/keys/cim-wasabi.env";
          };
          policies = {
            warm-after-30d = { to = "warm"; min_age = "30d"; };
            drop-scratch = { action = "expire"; labels = [ "scratch" ]; };
          };
        };
      }
    ];
  withTier = cfgOf tierModules;
  tierContainer = withTier.containers.cim-tier;
  # A leaf with the pipeline engine and two pipelines declared as Nix attrsets.
  pipelineKey = f.agentKeys.pipeline;
  withPipeline = cfgOf (
    f.leaf
    ++ [
      {
        services.cim.pipeline = {
          enable = true;
          nkeyPublicKey = pipelineKey;
          nkeySeedFile = "/run/keys/cim-pipeline.nk";
          pipelines = {
            docs.steps = map (s: { name = s; plugin = s; }) [ "classify" "extract" "index" ];
            contracts = {
              context.labels = [ "contract" ];
              steps = [ { name = "keep"; plugin = "retention"; settings.rules = [ { label = "retention:10y"; } ]; } ];
            };
          };
        };
      }
    ]
  );

  # A leaf with the hub and the dashboard, each behind nginx, every secret a file (keys made
  # by `cim keys new hub` / `cim keys new ui`, seeds discarded).
  hubKey = f.agentKeys.hub;
  uiKey = f.agentKeys.ui;
  hubUiModules = f.leaf ++ [
    {
      services.cim.outbound = { enable = true; nameservers = [ "9.9.9.9" ]; };
      services.cim.hub = {
        enable = true;
        nkeyPublicKey = hubKey;
        nkeySeedFile = "/run/keys/cim-hub-agent.nk";
        tokensFile = "/run/keys/cim-hub-tokens.json";
        webhooks.ci = {
          url = "https://ci.example.org/hooks/cim";
          secretFile = "/run/keys/cim-webhook-ci";
          max_attempts = 3;
        };
        connectors.scans = {
          plugin = "s3-import";
          settings = { bucket = "scans"; interval = 300; };
          secretFiles = {
            access_key_id_file = "/run/keys/cim-scans-id";
            secret_access_key_file = "/run/keys/cim-scans-secret";
          };
        };
        nginx = { enable = true; virtualHost = "ingest.example.org"; };
      };
      services.cim.ui = {
        enable = true;
        nkeyPublicKey = uiKey;
        nkeySeedFile = "/run/keys/cim-ui.nk";
        passwordFile = "/run/keys/cim-ui-users";
        sessionSecretFile = "/run/keys/cim-ui-session";
        nginx = { enable = true; virtualHost = "cim.example.org"; };
      };
    }
  ];
  withHubUi = cfgOf hubUiModules;
  # The same leaf watched by this host's Prometheus and Grafana (two hub instances, the
  # store's metrics on another port, Prometheus on another port).
  withMonitoring = cfgOf (hubUiModules ++ [
    {
      services.cim.monitoring = { prometheus.enable = true; grafana.enable = true; };
      services.cim.hub.instances = 2;
      services.cim.store.settings.metrics.port = 9500;
      services.prometheus.port = 9091;
    }
  ]);
  hubSettings = withHubUi.services.cim.hub.settings;
  uiSettings = withHubUi.services.cim.ui.settings;
  vhosts = c: c.services.nginx.virtualHosts;

  # Every string anywhere in a value.
  strings =
    value:
    if builtins.isString value then
      [ value ]
    else if builtins.isList value then
      lib.concatMap strings value
    else if builtins.isAttrs value && !(value ? outPath) then
      lib.concatMap strings (builtins.attrValues value)
    else
      [ ];
  everything = h.systemOf;
  hasSeed = value: lib.any (s: builtins.match ".*S[UNAOC][A-Z2-7]{56}.*" s != null) (strings value);

  # The assertions a broken configuration trips, by a substring of their message.
  fires =
    modules: needle:
    let
      failed = h.failedAssertions (cfgOf modules);
    in
    {
      expr = lib.any (m: lib.hasInfix needle m) failed;
      expected = true;
      got = failed;
    };

  tests = {
    # --- the strict declaration itself -------------------------------------------------
    "a correct leaf passes every assertion" = {
      expr = h.failedAssertions leaf;
      expected = [ ];
    };
    "a correct cluster node passes every assertion" = {
      expr = h.failedAssertions (node 2);
      expected = [ ];
    };
    "a correct attached leaf passes every assertion" = {
      expr = h.failedAssertions attached;
      expected = [ ];
    };
    "every fixture evaluates completely under the strict declaration" = {
      expr = map (c: h.fails (everything c)) [
        leaf
        (node 2)
        attached
      ];
      expected = [ false false false ];
    };
    "a misspelled CIM option fails" = {
      expr = h.fails (cfgOf (f.leaf ++ [ { services.cim.stor.enable = true; } ])).services.cim;
      expected = true;
    };
    "a misspelled NixOS option fails" = {
      expr = h.fails (cfgOf (f.leaf ++ [ { containers.cim-store.autoStrat = true; } ])).containers;
      expected = true;
    };
    "a misspelled option inside a container's config fails" = {
      expr = h.fails (storeContainer (cfgOf (f.leaf ++ [ { containers.cim-store.config.systemd.service.x = { }; } ]))).config;
      expected = true;
    };
    "a misspelled nginx virtual host option fails" = {
      expr = h.fails (cfgOf (f.leaf ++ [ { services.nginx.virtualHosts."cim.example.org".enableAcme = true; } ])).services.nginx;
      expected = true;
    };
    "a misspelled systemd unit key fails" = {
      expr = h.fails (cfgOf (f.leaf ++ [ { systemd.services.cim-provision.wantedby = [ ]; } ])).systemd.services;
      expected = true;
    };
    "an invalid systemd Restart value fails" = {
      expr = h.fails (cfgOf (f.leaf ++ [ { systemd.services.cim-provision.serviceConfig.Restart = "sometimes"; } ])).systemd.services.cim-provision.serviceConfig;
      expected = true;
    };

    "every container reuses the host's package set instead of evaluating nixpkgs again" = {
      expr = lib.mapAttrs (_: ct: ct.config.nixpkgs.pkgs == h.pkgs) withHubUi.containers;
      expected = { cim-hub = true; cim-store = true; cim-ui = true; };
    };
    "a non-default JetStream store directory is made for nats" = {
      expr = {
        default = leaf.systemd.tmpfiles.rules;
        moved = (cfgOf (f.leaf ++ [ { services.cim.nats.jetstream.storeDir = "/srv/nats"; } ])).systemd.tmpfiles.rules;
      };
      expected = {
        default = [ ];
        moved = [ "d /srv/nats 0750 nats nats - -" ];
      };
    };
    "secret files: a unit is skipped, not failed, while one is missing; ordered after colmena's key service" = {
      expr =
        let
          c = (h.evalNixos [ (import ./nixos/colmena.nix "leaf") ./nixos/hardware.nix flake.colmena.leaf ]).config;
        in
        {
          required = lib.mapAttrs (_: r: r.files) c.services.cim.keys.required;
          store = {
            inherit (c.systemd.services."container@cim-store") after;
            condition = c.systemd.services."container@cim-store".unitConfig.ConditionPathExists;
            # Nothing the unit needs waits for a missing key: no Requires=/Wants= on a waiter.
            requires = c.systemd.services."container@cim-store".requires;
          };
          handler = { inherit (c.systemd.services.cim-keys-container-cim-store) wantedBy; inherit (c.systemd.services.cim-keys-container-cim-store.serviceConfig) Type; };
          watch = c.systemd.paths.cim-keys-container-cim-store.pathConfig;
        };
      expected = {
        required = {
          "container@cim-store" = [ "/run/keys/cim-store.nk" ];
          cim-provision = [ "/run/keys/cim-admin.nk" ];
          nats = [ "/run/keys/cim-hub.nk" ];
        };
        store = {
          after = [ "cim-store.nk-key.service" ];
          condition = [ "/run/keys/cim-store.nk" ];
          requires = [ ];
        };
        handler = { wantedBy = [ "multi-user.target" ]; Type = "oneshot"; };
        watch = {
          PathChanged = [ "/run/keys/cim-store.nk" "/run/keys" ];
          Unit = "cim-keys-container-cim-store.service";
        };
      };
    };
    "secret files: nginx must be able to read its basic auth file itself, and may enter /run/keys" =
      let
        c = cfgOf (hubUiModules ++ [ { services.cim.ui = { trustedHeader = "X-Remote-User"; nginx.basicAuthFile = "/run/keys/cim-ui-htpasswd"; }; } ]);
      in
      {
        expr = { required = c.services.cim.keys.required.nginx; groups = c.users.users.nginx.extraGroups; };
        expected = { required = { files = [ "/run/keys/cim-ui-htpasswd" ]; user = "nginx"; }; groups = [ "keys" ]; };
      };

    # --- the example fleet in hosts/ ------------------------------------------------------
    "every example host passes every assertion" = {
      expr = map (name: h.failedAssertions (host name)) (builtins.attrNames hosts);
      expected = map (_: [ ]) (builtins.attrNames hosts);
    };
    "the fleet is a leaf and three cluster nodes" = {
      expr = lib.mapAttrs (name: _: (host name).services.cim.topology) hosts;
      expected = {
        leaf = "leaf";
        cluster-1 = "cluster";
        cluster-2 = "cluster";
        cluster-3 = "cluster";
      };
    };
    "host cluster-2 routes to cluster-1 and cluster-3, not to itself" = {
      expr = (natsSettings (host "cluster-2")).cluster.routes;
      expected = [
        "nats-route://10.0.0.11:6222"
        "nats-route://10.0.0.13:6222"
      ];
    };
    "the leaf host attaches to all three cluster nodes and they accept its key" = {
      expr = {
        urls = (builtins.head (natsSettings (host "leaf")).leafnodes.remotes).urls;
        accepted = map (i: builtins.elem (import ../../hosts/keys.nix).leaf.hub (userKeys (host "cluster-${toString i}"))) [ 1 2 3 ];
      };
      expected = {
        urls = [
          "nats-leaf://10.0.0.11:7422"
          "nats-leaf://10.0.0.12:7422"
          "nats-leaf://10.0.0.13:7422"
        ];
        accepted = [ true true true ];
      };
    };
    "colmena tags and keys come from the same host list" = {
      expr = lib.mapAttrs (_: h: {
        inherit (h.deployment) tags;
        keys = builtins.attrNames h.deployment.keys;
      }) hosts;
      expected = {
        leaf = {
          tags = [ "cim-leaf" ];
          keys = [ "cim-admin.nk" "cim-hub.nk" "cim-store.nk" ];
        };
        cluster-1 = {
          tags = [ "cim-cluster" ];
          keys = [ "cim-admin.nk" "cim-pipeline.nk" "cim-route-password" "cim-store.nk" ];
        };
        cluster-2 = {
          tags = [ "cim-cluster" ];
          keys = [ "cim-admin.nk" "cim-pipeline.nk" "cim-route-password" "cim-store.nk" ];
        };
        cluster-3 = {
          tags = [ "cim-cluster" ];
          keys = [ "cim-admin.nk" "cim-pipeline.nk" "cim-route-password" "cim-store.nk" ];
        };
      };
    };
    "deployed secrets are read on the deployer from $CIM_SECRETS, never given as text or by a relative path" = {
      expr = lib.unique (
        lib.concatMap (
          h: lib.mapAttrsToList (_: k: k ? text == false && lib.hasPrefix "exec cat -- \"\${CIM_SECRETS:?" (lib.last k.keyCommand)) h.deployment.keys
        ) (builtins.attrValues hosts)
      );
      expected = [ true ];
    };
    "every host deploys exactly the secret files its units read" = {
      expr = lib.mapAttrs (
        name: h: lib.sort lib.lessThan (lib.mapAttrsToList (_: k: "${k.destDir or "/run/keys"}/${k.name or _}") h.deployment.keys)
      ) hosts;
      expected = lib.mapAttrs (
        name: _: lib.sort lib.lessThan (lib.unique (lib.concatMap (r: r.files) (builtins.attrValues (host name).services.cim.keys.required)))
      ) hosts;
    };

    # --- routes --------------------------------------------------------------------------
    "node 2 routes to nodes 1 and 3, not to itself" = {
      expr = (natsSettings (node 2)).cluster.routes;
      expected = [
        "nats-route://10.0.0.11:6222"
        "nats-route://10.0.0.13:6222"
      ];
    };
    "node 1 routes to nodes 2 and 3" = {
      expr = (natsSettings (node 1)).cluster.routes;
      expected = [
        "nats-route://10.0.0.12:6222"
        "nats-route://10.0.0.13:6222"
      ];
    };
    "each node's server name is its own" = {
      expr = map (i: (natsSettings (node i)).server_name) [ 1 2 3 ];
      expected = [ "cluster-1" "cluster-2" "cluster-3" ];
    };
    "a leaf has no cluster block" = {
      expr = (natsSettings leaf) ? cluster;
      expected = false;
    };
    "cluster nodes open the leafnode port to all, the route port only to the other nodes" = {
      expr = {
        open = (node 1).networking.firewall.allowedTCPPorts;
        routes = (node 1).networking.firewall.extraCommands;
      };
      expected = {
        open = [ 7422 ];
        routes = "iptables -w -I nixos-fw -p tcp -s 10.0.0.12 --dport 6222 -j nixos-fw-accept\niptables -w -I nixos-fw -p tcp -s 10.0.0.13 --dport 6222 -j nixos-fw-accept\n";
      };
    };
    "with nftables the route port is opened by source address in the input rules" = {
      expr = (cfgOf (f.clusterNode 1 ++ [ { networking.nftables.enable = true; } ])).networking.firewall.extraInputRules;
      expected = "ip saddr 10.0.0.12 tcp dport 6222 accept\nip saddr 10.0.0.13 tcp dport 6222 accept\n";
    };
    "a cluster dials and accepts routes as user cim-route; the password reaches nats only at start" = {
      expr = {
        authorization = (natsSettings (node 1)).cluster.authorization;
        credential = builtins.elem "route-password:/run/keys/cim-route-password" (node 1).systemd.services.nats.serviceConfig.LoadCredential;
        spliced = lib.hasInfix "nats-route://cim-route:" (builtins.elemAt (node 1).systemd.services.nats.serviceConfig.ExecStartPre 0).text;
        seed = hasSeed (everything (node 1));
      };
      expected = {
        authorization.user = "cim-route";
        credential = true;
        spliced = true;
        seed = false;
      };
    };
    "a node named by DNS: its route rules resolve at firewall start, and one that does not resolve leaves the port closed instead of aborting the firewall" = {
      expr = lib.hasInfix "-s cluster-2.example.org --dport 6222 -j nixos-fw-accept 2>/dev/null || echo" (
        cfgOf (f.clusterNode 1 ++ [ { services.cim.cluster.nodes = lib.mkForce (lib.imap1 (i: n: n // { address = "cluster-${toString i}.example.org"; }) f.nodes); } ])
      ).networking.firewall.extraCommands;
      expected = true;
    };
    "assertion: DNS names for the nodes with nftables" = fires (
      f.clusterNode 1 ++ [ { networking.nftables.enable = true; services.cim.cluster.nodes = lib.mkForce (lib.imap1 (i: n: n // { address = "cluster-${toString i}.example.org"; }) f.nodes); } ]
    ) "nftables rules, which take IP addresses only";
    "assertion: a cluster without route authentication" = fires (
      f.clusterNode 1 ++ [ { services.cim.cluster.routePasswordFile = lib.mkForce null; } ]
    ) "without route authentication";
    "a cluster with verified route TLS needs no route password" = {
      expr = h.failedAssertions (cfgOf (f.clusterNode 1 ++ [ {
        services.cim.cluster.routePasswordFile = lib.mkForce null;
        services.cim.nats.tls.route = { certFile = "/run/keys/r.crt"; keyFile = "/run/keys/r.key"; caFile = "/run/keys/ca.crt"; };
      } ]));
      expected = [ ];
    };
    "a leaf opens no port to the world" = {
      expr = leaf.networking.firewall.allowedTCPPorts;
      expected = [ ];
    };
    "an attached leaf has a remote to every cluster node, in the CIM account" = {
      expr = map (r: { inherit (r) urls account; }) (natsSettings attached).leafnodes.remotes;
      expected = [
        {
          urls = [
            "nats-leaf://10.0.0.11:7422"
            "nats-leaf://10.0.0.12:7422"
            "nats-leaf://10.0.0.13:7422"
          ];
          account = "CIM";
        }
      ];
    };
    "an attached leaf has a JetStream domain of its own" = {
      expr = (natsSettings attached).jetstream.domain;
      expected = "leaf";
    };
    "the hub seed reaches nats-server as a credential, spliced in at start" = {
      expr = {
        cred = attached.systemd.services.nats.serviceConfig.LoadCredential;
        exec = attached.systemd.services.nats.serviceConfig.ExecStart;
      };
      expected = {
        cred = [ "hub-seed:/run/keys/cim-hub.nk" ];
        exec = "${h.pkgs.nats-server}/bin/nats-server -c /run/cim-nats/nats.conf";
      };
    };
    "the cluster accepts the attached leaf's key" = {
      expr = builtins.elem f.keys.hub (userKeys (node 3));
      expected = true;
    };

    # --- JetStream, monitoring, TLS ------------------------------------------------------
    "JetStream is on with its store directory and limits" = {
      expr = (natsSettings leaf).jetstream;
      expected = {
        store_dir = "/var/lib/nats";
        max_memory_store = "1G";
        max_file_store = "10G";
      };
    };
    "the monitoring port listens on loopback" = {
      expr = (natsSettings leaf).http;
      expected = "127.0.0.1:8222";
    };
    "TLS files reach nats-server as credentials, and the config names only their copies" =
      let
        c = cfgOf (
          f.clusterNode 1
          ++ [
            {
              services.cim.nats.tls.route = {
                certFile = "/run/keys/route.crt";
                keyFile = "/run/keys/route.key";
                caFile = "/run/keys/ca.crt";
              };
            }
          ]
        );
      in
      {
        expr = {
          tls = (natsSettings c).cluster.tls;
          creds = c.systemd.services.nats.serviceConfig.LoadCredential;
          validate = c.services.nats.validateConfig;
        };
        expected = {
          tls = {
            cert_file = "/run/credentials/nats.service/route-cert";
            key_file = "/run/credentials/nats.service/route-key";
            ca_file = "/run/credentials/nats.service/route-ca";
            verify = true;
          };
          creds = [
            "route-cert:/run/keys/route.crt"
            "route-key:/run/keys/route.key"
            "route-ca:/run/keys/ca.crt"
            "route-password:/run/keys/cim-route-password"
          ];
          validate = false;
        };
      };

    # --- replicas follow the topology ----------------------------------------------------
    "a leaf provisions 1 replica" = {
      expr = leaf.services.cim.provision.specFile.json.replicas;
      expected = 1;
    };
    "a cluster provisions 3 replicas" = {
      expr = (node 1).services.cim.provision.specFile.json.replicas;
      expected = 3;
    };
    "the spec asks for the core resources and renders no extras by default" = {
      expr = removeAttrs leaf.services.cim.provision.specFile.json [ "replicas" ];
      expected = {
        include_core = true;
        streams = [ ];
        consumers = [ ];
        kv = [ ];
        objects = [ ];
      };
    };
    "a watch restarts nats-server once its full disk has room again (it keeps failing writes until then)" =
      let
        unit = leaf.systemd.services.cim-nats-disk-watch;
      in
      {
        expr = {
          inherit (unit.serviceConfig) ExecStart Restart;
          inherit (unit) after wantedBy;
        };
        expected = {
          ExecStart = "${leaf.services.cim.package}/bin/cim nats disk-watch --store-dir /var/lib/nats";
          Restart = "always";
          after = [ "nats.service" ];
          wantedBy = [ "multi-user.target" ];
        };
      };
    "provisioning is a oneshot after NATS, logging in with the admin credential" =
      let
        unit = leaf.systemd.services.cim-provision;
      in
      {
        expr = {
          inherit (unit.serviceConfig) Type LoadCredential ExecStart;
          inherit (unit) after requires restartTriggers;
        };
        expected = {
          Type = "oneshot";
          LoadCredential = [ "admin:/run/keys/cim-admin.nk" ];
          ExecStart = "${leaf.services.cim.package}/bin/cim --server nats://127.0.0.1:4222 --nkey %d/admin provision --spec ${leaf.services.cim.provision.specFile}";
          after = [ "nats.service" ];
          requires = [ "nats.service" ];
          restartTriggers = [ leaf.services.cim.provision.specFile ];
        };
      };

    # --- capabilities: container, config file, NATS user ---------------------------------
    "pipelines declared as attrsets reach the pipeline agent's settings, named by attribute" = {
      expr = map (p: { inherit (p) name; steps = map (st: st.plugin) p.steps; }) withPipeline.services.cim.pipeline.settings.pipelines;
      expected = [
        { name = "contracts"; steps = [ "retention" ]; }
        { name = "docs"; steps = [ "classify" "extract" "index" ]; }
      ];
    };
    "the pipeline agent has its container and its own NATS user" = {
      expr = {
        container = withPipeline.containers ? cim-pipeline;
        user = builtins.elem pipelineKey (userKeys withPipeline);
        leafHasNone = leaf.containers ? cim-pipeline;
      };
      expected = { container = true; user = true; leafHasNone = false; };
    };
    "several pipeline agents share the work in one container: one service, --instances, a metrics port each" = {
      expr =
        let
          c = cfgOf (f.leaf ++ [ {
            services.cim.pipeline = {
              enable = true;
              nkeyPublicKey = pipelineKey;
              nkeySeedFile = "/run/keys/cim-pipeline.nk";
              instances = 3;
            };
          } ]);
          inner = c.containers.cim-pipeline.config;
        in
        {
          exec = inner.systemd.services.cim-agent.serviceConfig.ExecStart;
          ports = inner.networking.firewall.allowedTCPPorts;
          failed = h.failedAssertions c;
        };
      expected = {
        exec = "${leaf.services.cim.package}/bin/cim agent run pipeline --config /etc/cim/pipeline.json --instances 3";
        ports = [ 9464 9465 9466 ];
        failed = [ ];
      };
    };
    "one pipeline agent runs without --instances" = {
      expr = lib.hasInfix "--instances" withPipeline.containers.cim-pipeline.config.systemd.services.cim-agent.serviceConfig.ExecStart;
      expected = false;
    };
    "an agent whose work is not shared refuses instances" =
      fires (f.leaf ++ [ {
        services.cim.registry = { enable = true; nkeyPublicKey = registryKey; nkeySeedFile = "/run/keys/r.nk"; instances = 2; };
      } ]) "services.cim.registry.instances is 2, but the registry agent's work is not shared";
    "each agent keeps its projections in its StateDirectory, in the container's persistent root" = {
      expr = {
        state = withPipeline.containers.cim-pipeline.config.systemd.services.cim-agent.serviceConfig.StateDirectory;
        # Not ephemeral: nixos-containers keeps the root (and /var/lib) across restarts.
        ephemeral = withPipeline.containers.cim-pipeline.ephemeral;
      };
      expected = { state = "cim-pipeline"; ephemeral = false; };
    };
    "the enabled store has its container, started at boot on a private link" = {
      expr = {
        inherit (storeContainer leaf) autoStart privateNetwork hostAddress localAddress;
      };
      expected = {
        autoStart = true;
        privateNetwork = true;
        hostAddress = "10.233.4.1";
        localAddress = "10.233.4.2";
      };
    };
    "the store's seed is bind-mounted read-only, and nothing else" = {
      expr = lib.mapAttrs (_: m: { inherit (m) hostPath isReadOnly; }) (storeContainer leaf).bindMounts;
      expected = {
        "/run/cim/secrets/nkey" = {
          hostPath = "/run/keys/cim-store.nk";
          isReadOnly = true;
        };
      };
    };
    "the store agent runs `cim agent run store` from its checked config" = {
      expr = {
        exec = (storeUnit leaf).serviceConfig.ExecStart;
        etc = (storeContainer leaf).config.environment.etc."cim/store.json".source.name;
        check = lib.hasInfix "bin/cim config check" (storeContainer leaf).config.environment.etc."cim/store.json".source.script;
      };
      expected = {
        exec = "${leaf.services.cim.package}/bin/cim agent run store --config /etc/cim/store.json";
        etc = "cim-store-config";
        check = true;
      };
    };
    "the store agent unit is hardened and gets its seed as a credential" = {
      expr = {
        inherit ((storeUnit leaf).serviceConfig)
          DynamicUser
          NoNewPrivileges
          ProtectSystem
          CapabilityBoundingSet
          LoadCredential
          ;
      };
      expected = {
        DynamicUser = true;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        CapabilityBoundingSet = "";
        LoadCredential = [ "nkey:/run/cim/secrets/nkey" ];
      };
    };
    "the store config names NATS over the link and the credential, not the host's seed path" = {
      expr = leaf.services.cim.store.settings;
      expected = {
        capability = "store";
        name = "cim-store";
        nats = {
          servers = [ "nats://10.233.4.1:4222" ];
          nkey_seed_file = "/run/credentials/cim-agent.service/nkey";
        };
        metrics = {
          host = "0.0.0.0";
          port = 9464;
        };
        log_level = "info";
      };
    };
    "settings are freeform and user values win over the defaults" = {
      expr =
        (cfgOf (
          f.leaf
          ++ [
            {
              services.cim.store.settings = {
                log_level = "debug";
                max_unit_size = 1024;
              };
            }
          ]
        )).services.cim.store.settings;
      expected = leaf.services.cim.store.settings // {
        log_level = "debug";
        max_unit_size = 1024;
      };
    };
    "the NATS client port is open only on the store's link" = {
      expr = leaf.networking.firewall.interfaces."ve-cim-store".allowedTCPPorts;
      expected = [ 4222 ];
    };
    "the store's NATS user has exactly the store's permissions" = {
      expr = lib.findFirst (u: u.nkey == f.keys.store) null (users leaf);
      expected = {
        nkey = f.keys.store;
        permissions = capabilities.natsPermissions "store";
      };
    };
    "the store may not delete or purge the event stream" = {
      expr =
        let
          allowed = (lib.findFirst (u: u.nkey == f.keys.store) null (users leaf)).permissions.publish.allow;
        in
        lib.filter (s: lib.hasInfix "DELETE.CIM_EVENTS" s && !(lib.hasPrefix "$JS.API.CONSUMER" s) || lib.hasInfix "PURGE.CIM_EVENTS" s || s == ">" || s == "$JS.API.>") allowed;
      expected = [ ];
    };
    "the operator user is unrestricted in the CIM account" = {
      expr = lib.findFirst (u: u.nkey == f.keys.admin) null (users leaf);
      expected = {
        nkey = f.keys.admin;
      };
    };
    "a disabled store has no container, no config, no user and no open port" =
      let
        c = cfgOf (f.leaf ++ [ { services.cim.store.enable = lib.mkForce false; } ]);
      in
      {
        expr = {
          containers = builtins.attrNames c.containers;
          users = userKeys c;
          interfaces = builtins.attrNames c.networking.firewall.interfaces;
        };
        expected = {
          containers = [ ];
          users = [ f.keys.admin ];
          interfaces = [ ];
        };
      };
    "every capability in capabilities.json that has a module gets a container when enabled" = {
      expr = builtins.attrNames leaf.containers;
      expected = map (n: "cim-${n}") (builtins.filter (n: leaf.services.cim.${n}.enable) capabilities.names);
    };

    # --- the registry capability ---------------------------------------------------------
    "the registry has its container and runs `cim agent run registry` from its checked config" = {
      expr = {
        inherit (registryContainer withRegistry) autoStart privateNetwork hostAddress localAddress;
        exec = (registryContainer withRegistry).config.systemd.services.cim-agent.serviceConfig.ExecStart;
        etc = (registryContainer withRegistry).config.environment.etc."cim/registry.json".source.name;
      };
      expected = {
        autoStart = true;
        privateNetwork = true;
        hostAddress = "10.233.3.1";
        localAddress = "10.233.3.2";
        exec = "${leaf.services.cim.package}/bin/cim agent run registry --config /etc/cim/registry.json";
        etc = "cim-registry-config";
      };
    };
    "the registry's NATS user has exactly the registry's permissions" = {
      expr = lib.findFirst (u: u.nkey == registryKey) null (users withRegistry);
      expected = {
        nkey = registryKey;
        permissions = capabilities.natsPermissions "registry";
      };
    };
    "each agent may announce itself in the registry bucket only under its own capability" = {
      expr = map (key: lib.filter (lib.hasPrefix "$KV.CIM_REGISTRY.") (lib.findFirst (u: u.nkey == key) null (users withRegistry)).permissions.publish.allow) [
        f.keys.store
        registryKey
      ];
      expected = [
        [ "$KV.CIM_REGISTRY.store.>" ]
        # The registry too: it reads every record, but writes only its own.
        [ "$KV.CIM_REGISTRY.registry.>" ]
      ];
    };
    "registry settings are freeform and user values win over the defaults" = {
      expr = withRegistry.services.cim.registry.settings;
      expected = {
        capability = "registry";
        name = "cim-registry";
        nats = {
          servers = [ "nats://10.233.3.1:4222" ];
          nkey_seed_file = "/run/credentials/cim-agent.service/nkey";
        };
        metrics = {
          host = "0.0.0.0";
          port = 9464;
        };
        log_level = "info";
        stale_after = 20;
        registry.heartbeat = 2;
      };
    };

    # --- no secret is rendered -----------------------------------------------------------
    "no seed appears in the NATS config, the agent config or the spec" = {
      expr = map hasSeed [
        (natsSettings attached)
        attached.services.cim.store.settings
        attached.services.cim.provision.specFile.json
      ];
      expected = [ false false false ];
    };
    "the host's seed paths appear in no rendered config" = {
      expr = lib.filter (s: lib.hasPrefix "/run/keys/" s) (
        strings [
          (natsSettings attached)
          attached.services.cim.store.settings
          attached.services.cim.provision.specFile.json
        ]
      );
      expected = [ ];
    };

    # --- every assertion fires on its bad input ------------------------------------------
    "assertion: a cluster with fewer than 3 nodes" = fires (
      f.clusterNode 1 ++ [ { services.cim.cluster.nodes = lib.mkForce (lib.take 2 f.nodes); } ]
    ) "needs at least 3 nodes";
    "assertion: a node missing from its own node list" = fires (
      f.clusterNode 1 ++ [ { services.cim.nodeName = lib.mkForce "cluster-9"; } ]
    ) "must be in its own node list";
    "assertion: two nodes with one name" = fires (
      f.clusterNode 1
      ++ [
        {
          services.cim.cluster.nodes = lib.mkForce (f.nodes ++ [ { name = "cluster-1"; address = "10.0.0.14"; } ]);
        }
      ]
    ) "more than once";
    "assertion: two nodes with one address" = fires (
      f.clusterNode 1
      ++ [
        {
          services.cim.cluster.nodes = lib.mkForce (f.nodes ++ [ { name = "cluster-4"; address = "10.0.0.11"; } ]);
        }
      ]
    ) "to more than one node";
    "assertion: a seed given as a string instead of a file" = fires (
      f.leaf ++ [ { services.cim.store.nkeySeedFile = lib.mkForce f.fakeSeed; } ]
    ) "holds an nkey seed itself";
    "assertion: a secret file given as a Nix path" = fires (
      f.leaf ++ [ { services.cim.store.nkeySeedFile = lib.mkForce ./fixtures.nix; } ]
    ) "copied into the world-readable Nix store";
    "assertion: a secret file inside the Nix store" = fires (
      f.leaf ++ [ { services.cim.provision.adminSeedFile = lib.mkForce "${builtins.storeDir}/x-admin.nk"; } ]
    ) "is inside the Nix store";
    "assertion: a seed where the public key goes" = fires (
      f.leaf ++ [ { services.cim.store.nkeyPublicKey = lib.mkForce f.fakeSeed; } ]
    ) "is an nkey SEED";
    "assertion: a malformed public key" = fires (
      f.leaf ++ [ { services.cim.nats.adminPublicKey = lib.mkForce "not-a-key"; } ]
    ) "is not a user nkey public key";
    "assertion: an inline secret in an agent's settings" = fires (
      f.leaf ++ [ { services.cim.store.settings.nats.nkey_seed = "anything"; } ]
    ) "services.cim.store.settings.nats.nkey_seed would put a secret";
    "assertion: a capability enabled without CIM's NATS" = fires (
      f.leaf ++ [ { services.cim.enable = lib.mkForce false; } ]
    ) "but services.cim.enable is not";
    "assertion: a capability enabled with NATS switched off" = fires (
      f.leaf ++ [ { services.nats.enable = lib.mkForce false; } ]
    ) "services.nats.enable is false";
    "assertion: a capability without its public key" = fires (
      f.leaf ++ [ { services.cim.store.nkeyPublicKey = lib.mkForce null; } ]
    ) "services.cim.store.nkeyPublicKey is not set";
    "assertion: a capability without its seed file" = fires (
      f.leaf ++ [ { services.cim.store.nkeySeedFile = lib.mkForce null; } ]
    ) "services.cim.store.nkeySeedFile is not set";
    "assertion: a hub without this leaf's seed" = fires (
      f.attachedLeaf ++ [ { services.cim.nats.hub.nkeySeedFile = lib.mkForce null; } ]
    ) "services.cim.nats.hub.nkeySeedFile is not";
    "assertion: provisioning without the admin seed" = fires (
      f.leaf ++ [ { services.cim.provision.adminSeedFile = lib.mkForce null; } ]
    ) "adminSeedFile is not set";
    "assertion: provisioning without the admin public key" = fires (
      f.leaf ++ [ { services.cim.nats.adminPublicKey = lib.mkForce null; } ]
    ) "adminPublicKey is not set";
    "tier: tiers from hot to cold, keys only as credential paths" = {
      expr = map (t: { inherit (t) name url credentials_file; endpoint = t.endpoint or null; }) withTier.services.cim.tier.settings.tiers;
      expected = [
        {
          name = "warm";
          url = "s3://cim-warm/units";
          endpoint = "http://10.233.5.1:3900";
          credentials_file = "/run/credentials/cim-agent.service/tier-warm";
        }
        {
          name = "archive";
          url = "s3://acme-cim/cim";
          endpoint = "https://s3.eu-central-1.wasabisys.com";
          credentials_file = "/run/credentials/cim-agent.service/tier-archive";
        }
      ];
    };
    "tier: the archive's checksum reaches its settings; other tiers take the default" = {
      expr = map (t: t.checksum or "crc32") withTier.services.cim.tier.settings.tiers;
      expected = [ "crc32" "sha256" ];
    };
    "tier: policies are named by their attribute, backups go to the archive" = {
      expr = {
        policies = map (p: p.name) withTier.services.cim.tier.settings.policies;
        inherit (withTier.services.cim.tier.settings) backup;
      };
      expected = {
        policies = [ "drop-scratch" "warm-after-30d" ];
        backup.tier = "archive";
      };
    };
    "tier: the S3 key files are bind-mounted read-only, never copied" = {
      expr = lib.mapAttrs (_: m: { inherit (m) hostPath isReadOnly; }) tierContainer.bindMounts;
      expected = {
        "/run/cim/secrets/nkey" = { hostPath = "/run/keys/cim-tier.nk"; isReadOnly = true; };
        "/run/cim/secrets/tier-warm" = { hostPath = "/var/lib/cim-garage/tier.env"; isReadOnly = true; };
        "/run/cim/secrets/tier-archive" = { hostPath = "/run/keys/cim-wasabi.env"; isReadOnly = true; };
      };
    };
    "tier: Garage runs on the host, its secret and the tier's key made at activation, only the tier container reaches it" = {
      expr = {
        inherit (withTier.services.garage) enable environmentFile;
        package = withTier.services.garage.package.name;
        s3 = withTier.services.garage.settings.s3_api.api_bind_addr;
        firewall = withTier.networking.firewall.interfaces."ve-cim-tier".allowedTCPPorts;
        setup = {
          inherit (withTier.systemd.services.cim-garage-setup) after wants wantedBy requires;
          inherit (withTier.systemd.services.cim-garage-setup.serviceConfig) EnvironmentFile UMask;
        };
        warm = builtins.head withTier.services.cim.tier.settings.tiers;
      };
      expected = {
        enable = true;
        environmentFile = "/var/lib/cim-garage/garage.env";
        package = "garage_2";
        s3 = "[::]:3900";
        firewall = [ 3900 4222 ];
        setup = {
          # Stopping Garage must not stop the tier container.
          after = [ "garage.service" ];
          wants = [ "garage.service" ];
          requires = [ ];
          wantedBy = [ "multi-user.target" "container@cim-tier.service" ];
          EnvironmentFile = "/var/lib/cim-garage/garage.env";
          UMask = "0077";
        };
        warm = {
          name = "warm";
          url = "s3://cim-warm/units";
          endpoint = "http://10.233.5.1:3900";
          region = "garage";
          addressing_style = "path";
          credentials_file = "/run/credentials/cim-agent.service/tier-warm";
        };
      };
    };
    "tier: no secret of Garage's is on a command line or in a rendered file" = {
      expr = hasSeed (everything withTier) || lib.any (lib.hasInfix "GARAGE_RPC_SECRET=") (strings withTier.services.garage.settings);
      expected = false;
    };
    "tier: the removed MinIO option says what to use instead" = fires (
      tierModules ++ [ { services.cim.tier.minio.enable = true; } ]
    ) "services.cim.tier.garage.enable = true";
    "assertion: an archive without its credentials file" = fires (
      tierModules ++ [ { services.cim.tier.archive.credentialsFile = lib.mkForce null; } ]
    ) "archive.credentialsFile must name";
    # --- the hub and the dashboard -------------------------------------------------------
    "hub and ui: a correct configuration passes every assertion and evaluates completely" = {
      expr = {
        failed = h.failedAssertions withHubUi;
        fails = h.fails (everything withHubUi);
      };
      expected = { failed = [ ]; fails = false; };
    };
    "hub and ui: each has its container, its port open inside, nothing forwarded behind nginx" = {
      expr = lib.genAttrs [ "cim-hub" "cim-ui" ] (n: {
        inherit (withHubUi.containers.${n}) forwardPorts localAddress;
        inside = withHubUi.containers.${n}.config.networking.firewall.allowedTCPPorts;
        exec = withHubUi.containers.${n}.config.systemd.services.cim-agent.serviceConfig.ExecStart;
      });
      expected = {
        cim-hub = {
          forwardPorts = [ ];
          localAddress = "10.233.1.2";
          inside = [ 8471 9464 ];
          exec = "${leaf.services.cim.package}/bin/cim agent run hub --config /etc/cim/hub.json";
        };
        cim-ui = {
          forwardPorts = [ ];
          localAddress = "10.233.6.2";
          inside = [ 8470 9464 ];
          exec = "${leaf.services.cim.package}/bin/cim agent run ui --config /etc/cim/ui.json";
        };
      };
    };
    "hub and ui: the agents listen on every address inside the container, so the host reaches them" = {
      expr = map (s: s.http) [ hubSettings uiSettings ];
      expected = [ { host = "0.0.0.0"; port = 8471; } { host = "0.0.0.0"; port = 8470; } ];
    };
    "hub: tokens, webhook secret and S3 keys are named only by their credential paths" = {
      expr = {
        inherit (hubSettings) tokens_file;
        webhooks = hubSettings.webhooks;
        connectors = hubSettings.connectors;
      };
      expected = {
        tokens_file = "/run/credentials/cim-agent.service/tokens";
        webhooks = [
          {
            name = "ci";
            url = "https://ci.example.org/hooks/cim";
            max_attempts = 3;
            secret_file = "/run/credentials/cim-agent.service/webhook-ci";
          }
        ];
        connectors = [
          {
            name = "scans";
            plugin = "s3-import";
            settings = {
              bucket = "scans";
              interval = 300;
              access_key_id_file = "/run/credentials/cim-agent.service/connector-scans-access_key_id_file";
              secret_access_key_file = "/run/credentials/cim-agent.service/connector-scans-secret_access_key_file";
            };
          }
        ];
      };
    };
    "hub: every secret file is bind-mounted read-only and loaded as a credential" = {
      expr = {
        mounts = lib.mapAttrs (_: m: { inherit (m) hostPath isReadOnly; }) withHubUi.containers.cim-hub.bindMounts;
        creds = withHubUi.containers.cim-hub.config.systemd.services.cim-agent.serviceConfig.LoadCredential;
      };
      expected = {
        mounts = {
          "/run/cim/secrets/nkey" = { hostPath = "/run/keys/cim-hub-agent.nk"; isReadOnly = true; };
          "/run/cim/secrets/tokens" = { hostPath = "/run/keys/cim-hub-tokens.json"; isReadOnly = true; };
          "/run/cim/secrets/webhook-ci" = { hostPath = "/run/keys/cim-webhook-ci"; isReadOnly = true; };
          "/run/cim/secrets/connector-scans-access_key_id_file" = { hostPath = "/run/keys/cim-scans-id"; isReadOnly = true; };
          "/run/cim/secrets/connector-scans-secret_access_key_file" = { hostPath = "/run/keys/cim-scans-secret"; isReadOnly = true; };
        };
        creds = [
          "connector-scans-access_key_id_file:/run/cim/secrets/connector-scans-access_key_id_file"
          "connector-scans-secret_access_key_file:/run/cim/secrets/connector-scans-secret_access_key_file"
          "nkey:/run/cim/secrets/nkey"
          "tokens:/run/cim/secrets/tokens"
          "webhook-ci:/run/cim/secrets/webhook-ci"
        ];
      };
    };
    "hub: an inbox folder is made on the host, mounted read-write and writable by the hardened agent through its group" = {
      expr =
        let
          c = cfgOf (hubUiModules ++ [ { services.cim.hub.connectors.drop = { plugin = "inbox"; settings = { path = "/srv/cim-inbox"; labels = [ "dropped" ]; }; }; } ]);
          ct = c.containers.cim-hub;
          unit = ct.config.systemd.services.cim-agent.serviceConfig;
        in
        {
          failed = h.failedAssertions c;
          mount = ct.bindMounts."/srv/cim-inbox";
          inherit (unit) ReadWritePaths SupplementaryGroups DynamicUser ProtectSystem;
          groupInside = ct.config.users.groups.cim-inbox.gid;
          groupOnHost = c.users.groups.cim-inbox.gid;
          tmpfiles = c.systemd.tmpfiles.rules;
          connector = lib.findFirst (x: x.name == "drop") null c.services.cim.hub.settings.connectors;
          secretMountsStayReadOnly = lib.all (m: m.isReadOnly) (lib.attrValues (removeAttrs ct.bindMounts [ "/srv/cim-inbox" ]));
          withoutInbox = { inherit (withHubUi.systemd.tmpfiles) rules; groups = withHubUi.users.groups; rw = withHubUi.containers.cim-hub.config.systemd.services.cim-agent.serviceConfig ? ReadWritePaths; };
        };
      expected = {
        failed = [ ];
        mount = { mountPoint = "/srv/cim-inbox"; hostPath = "/srv/cim-inbox"; isReadOnly = false; };
        ReadWritePaths = [ "/srv/cim-inbox" ];
        SupplementaryGroups = [ "cim-inbox" ];
        DynamicUser = true;
        ProtectSystem = "strict";
        groupInside = 8471;
        groupOnHost = 8471;
        tmpfiles = [
          "d /srv/cim-inbox 2770 root cim-inbox - -"
          "d /srv/cim-inbox/done 2770 root cim-inbox - -"
          "d /srv/cim-inbox/failed 2770 root cim-inbox - -"
        ];
        connector = { name = "drop"; plugin = "inbox"; settings = { path = "/srv/cim-inbox"; labels = [ "dropped" ]; }; };
        secretMountsStayReadOnly = true;
        withoutInbox = { rules = [ ]; groups = { }; rw = false; };
      };
    };
    "assertion: an inbox folder the hardened agent cannot write (under /home)" = fires (
      hubUiModules ++ [ { services.cim.hub.connectors.drop = { plugin = "inbox"; settings.path = "/home/alice/inbox"; }; } ]
    ) "is under /home, which the hardened agent cannot write";
    "assertion: an inbox connector without its folder" = fires (
      hubUiModules ++ [ { services.cim.hub.connectors.drop.plugin = "inbox"; } ]
    ) "connectors.drop.settings.path is not set";
    "ui: password hashes and session key by credential path; behind nginx it trusts only the link and sets Secure cookies" = {
      expr = {
        inherit (uiSettings) password_file session_secret_file trusted_proxies secure_cookies;
        header = uiSettings ? trusted_header;
      };
      expected = {
        password_file = "/run/credentials/cim-agent.service/passwords";
        session_secret_file = "/run/credentials/cim-agent.service/session-secret";
        trusted_proxies = [ "10.233.6.1" ];
        secure_cookies = true;
        header = false;
      };
    };
    "hub and ui: no host secret path and no seed appears in any rendered config" = {
      expr = {
        paths = lib.filter (lib.hasPrefix "/run/keys/") (strings [
          hubSettings
          uiSettings
          (vhosts withHubUi)
          (natsSettings withHubUi)
        ]);
        seed = hasSeed (everything withHubUi);
      };
      expected = { paths = [ ]; seed = false; };
    };
    "hub and ui: each agent's NATS user has exactly its capability's permissions" = {
      expr = map (key: (lib.findFirst (u: u.nkey == key) null (users withHubUi)).permissions) [ hubKey uiKey ];
      expected = map capabilities.natsPermissions [ "hub" "ui" ];
    };
    "nginx: no virtual host and no nginx unless enabled" = {
      expr = {
        leaf = { inherit (leaf.services.nginx) enable; hosts = builtins.attrNames (vhosts leaf); };
        off =
          let
            c = cfgOf (hubUiModules ++ [ { services.cim.hub.nginx.enable = lib.mkForce false; services.cim.ui.nginx.enable = lib.mkForce false; } ]);
          in
          { inherit (c.services.nginx) enable; hosts = builtins.attrNames (vhosts c); };
      };
      expected = {
        leaf = { enable = false; hosts = [ "localhost" ]; };
        off = { enable = false; hosts = [ "localhost" ]; };
      };
    };
    "nginx: the dashboard's virtual host has ACME, forces HTTPS, proxies to the container, and streams events unbuffered" =
      let
        v = (vhosts withHubUi)."cim.example.org";
        sse = v.locations."/events/stream";
      in
      {
        expr = {
          inherit (withHubUi.services.nginx) enable;
          inherit (v) enableACME forceSSL;
          root = { inherit (v.locations."/") proxyPass recommendedProxySettings; };
          sse = {
            inherit (sse) proxyPass proxyWebsockets;
            unbuffered = lib.hasInfix "proxy_buffering off;" sse.extraConfig;
          };
        };
        expected = {
          enable = true;
          enableACME = true;
          forceSSL = true;
          root = { proxyPass = "http://10.233.6.2:8470"; recommendedProxySettings = true; };
          sse = { proxyPass = "http://10.233.6.2:8470"; proxyWebsockets = true; unbuffered = true; };
        };
      };
    "nginx: the ingest API's virtual host proxies to the container and takes bodies as large as the agent" =
      let
        root = (vhosts withHubUi)."ingest.example.org".locations."/";
      in
      {
        expr = {
          inherit (root) proxyPass;
          body = lib.hasInfix "client_max_body_size 67108864;" root.extraConfig;
        };
        expected = { proxyPass = "http://10.233.1.2:8471"; body = true; };
      };
    "hub and ui: the host firewall stays shut unless openFirewall, which opens the forwarded ports and 80/443" = {
      expr = {
        default = withHubUi.networking.firewall.allowedTCPPorts;
        opened = (cfgOf (hubUiModules ++ [ { services.cim.ui.openFirewall = true; services.cim.hub.openFirewall = true; services.cim.hub.nginx.enable = lib.mkForce false; } ])).networking.firewall.allowedTCPPorts;
      };
      expected = { default = [ ]; opened = [ 80 443 8471 ]; };
    };
    "hub and ui: a port is forwarded only with openFirewall, and never by default behind nginx" = {
      expr = lib.mapAttrs (_: m: (cfgOf (f.leaf ++ f.identities' ++ [ m ])).containers.cim-hub.forwardPorts) {
        plain = { services.cim.hub.enable = true; };
        open = { services.cim.hub = { enable = true; openFirewall = true; }; };
        nginx = { services.cim.hub = { enable = true; openFirewall = true; nginx = { enable = true; virtualHost = "x.example.org"; }; }; };
      };
      expected = {
        plain = [ ];
        open = [ { protocol = "tcp"; hostPort = 8471; containerPort = 8471; } ];
        nginx = [ ];
      };
    };
    "assertion: a forwarded port the firewall cannot close" = fires (
      hubUiModules ++ [ { services.cim.ui.hostPort = 8470; } ]
    ) "services.cim.ui.hostPort = 8470 is forwarded to the container with a DNAT rule that the firewall does not filter";
    "hub and ui: hostPort = null forwards nothing" = {
      expr = (cfgOf (hubUiModules ++ [ { services.cim.ui.hostPort = null; } ])).containers.cim-ui.forwardPorts;
      expected = [ ];
    };
    "ui: a trusted header behind nginx is set from nginx's basic auth user, replacing what the client sent" =
      let
        c = cfgOf (hubUiModules ++ [
          {
            services.cim.ui = {
              passwordFile = lib.mkForce null;
              trustedHeader = "X-Remote-User";
              nginx.basicAuthFile = "/run/keys/cim-ui-htpasswd";
            };
          }
        ]);
        v = (vhosts c)."cim.example.org";
      in
      {
        expr = {
          failed = h.failedAssertions c;
          inherit (c.services.cim.ui.settings) trusted_header trusted_proxies;
          auth = v.basicAuthFile;
          header = map (l: lib.hasInfix "proxy_set_header X-Remote-User $remote_user;" v.locations.${l}.extraConfig) [ "/" "/events/stream" ];
        };
        expected = {
          failed = [ ];
          trusted_header = "X-Remote-User";
          trusted_proxies = [ "10.233.6.1" ];
          auth = "/run/keys/cim-ui-htpasswd";
          header = [ true true ];
        };
      };
    "assertion: a hub without its tokens file" = fires (
      hubUiModules ++ [ { services.cim.hub.tokensFile = lib.mkForce null; } ]
    ) "services.cim.hub.tokensFile is not set";
    "assertion: hub tokens inline in the settings" = fires (
      hubUiModules ++ [ { services.cim.hub.settings.tokens = [ { name = "ci"; token = "0123456789abcdef"; } ]; } ]
    ) "services.cim.hub.settings.tokens.0.token would put a secret";

    # --- monitoring (issue 17): nixpkgs' prometheus and grafana, nothing unless asked ----
    "monitoring: off by default, Prometheus and Grafana are left alone" = {
      expr = {
        prometheus = { inherit (withHubUi.services.prometheus) enable scrapeConfigs; };
        grafana = {
          inherit (withHubUi.services.grafana) enable;
          provision = withHubUi.services.grafana.provision.enable;
          dashboards = withHubUi.services.grafana.provision.dashboards.settings;
          datasources = withHubUi.services.grafana.provision.datasources.settings;
        };
      };
      expected = {
        prometheus = { enable = false; scrapeConfigs = [ ]; };
        grafana = { enable = false; provision = false; dashboards = null; datasources = null; };
      };
    };
    "monitoring: Prometheus scrapes each enabled capability at its container's metrics port, one target per instance" = {
      expr = { inherit (withMonitoring.services.prometheus) enable scrapeConfigs; };
      expected = {
        enable = true;
        scrapeConfigs = [
          {
            job_name = "cim";
            static_configs = [
              { targets = [ "10.233.1.2:9464" ]; labels = { capability = "hub"; agent = "cim-hub-1"; }; }
              { targets = [ "10.233.1.2:9465" ]; labels = { capability = "hub"; agent = "cim-hub-2"; }; }
              { targets = [ "10.233.4.2:9500" ]; labels = { capability = "store"; agent = "cim-store"; }; }
              { targets = [ "10.233.6.2:9464" ]; labels = { capability = "ui"; agent = "cim-ui"; }; }
            ];
          }
        ];
      };
    };
    "monitoring: Grafana provisions the dashboard file from the repository and a Prometheus datasource" =
      let
        g = withMonitoring.services.grafana;
        provider = builtins.head g.provision.dashboards.settings.providers;
      in
      {
        expr = {
          inherit (g) enable;
          provision = g.provision.enable;
          provider = {
            inherit (provider) name type folder;
            path = toString provider.options.path;
            dashboard = builtins.pathExists (provider.options.path + "/cim.json");
          };
          datasources = map (d: { inherit (d) name type uid url access; }) g.provision.datasources.settings.datasources;
        };
        expected = {
          enable = true;
          provision = true;
          provider = {
            name = "cim";
            type = "file";
            folder = "CIM";
            path = toString ../../monitoring/grafana;
            dashboard = true;
          };
          datasources = [ { name = "CIM Prometheus"; type = "prometheus"; uid = "cim-prometheus"; url = "http://127.0.0.1:9091"; access = "proxy"; } ];
        };
      };
    "monitoring: Grafana alone adds no datasource, keeps the user's providers, and Prometheus stays off" =
      let
        c = cfgOf (hubUiModules ++ [
          {
            services.cim.monitoring.grafana.enable = true;
            services.grafana.provision.dashboards.settings.providers = [ { name = "mine"; options.path = "/var/lib/dashboards"; } ];
          }
        ]);
      in
      {
        expr = {
          providers = lib.sort lib.lessThan (map (p: p.name) c.services.grafana.provision.dashboards.settings.providers);
          datasources = c.services.grafana.provision.datasources.settings;
          prometheus = { inherit (c.services.prometheus) enable scrapeConfigs; };
          failed = h.failedAssertions c;
        };
        expected = {
          providers = [ "cim" "mine" ];
          datasources = null;
          prometheus = { enable = false; scrapeConfigs = [ ]; };
          failed = [ ];
        };
      };
    "assertion: monitoring an agent whose metrics port is 0 (random at each start)" = fires (
      hubUiModules ++ [
        {
          services.cim.monitoring.prometheus.enable = true;
          services.cim.store.settings.metrics.port = 0;
        }
      ]
    ) "services.cim.store.settings.metrics.port is 0";
    "monitoring: a leaf with monitoring passes every assertion and evaluates completely" = {
      expr = { failed = h.failedAssertions withMonitoring; broken = h.fails (everything withMonitoring); };
      expected = { failed = [ ]; broken = false; };
    };

    # --- one rule for inline secrets, through attrsets and lists, in every capability ---
    "inline secret: an S3 secret key in a tier, inside the rendered tiers list" = fires (
      tierModules ++ [ { services.cim.tier.tiers.cold = { url = "s3://cold/units"; credentialsFile = "/run/keys/cold.env"; aws_secret_access_key = "abc"; }; } ]
    ) "services.cim.tier.settings.tiers.1.aws_secret_access_key would put a secret";
    "inline secret: a camelCase key deep in a pipeline step's settings" = fires (
      f.leaf ++ [ { services.cim.pipeline = { enable = true; nkeyPublicKey = pipelineKey; nkeySeedFile = "/run/keys/p.nk"; pipelines.p.steps = [ { name = "x"; plugin = "extract"; settings.ocr.apiKey = "k"; } ]; }; } ]
    ) "services.cim.pipeline.settings.pipelines.0.steps.0.settings.ocr.apiKey would put a secret";
    "inline secret: a NATS password in an agent's connection settings" = fires (
      f.leaf ++ [ { services.cim.store.settings.nats.password = "p"; } ]
    ) "services.cim.store.settings.nats.password would put a secret";
    "inline secret: an nkey seed as a list element, whatever its key" = fires (
      f.leaf ++ [ { services.cim.store.settings.extra_users = [ f.fakeSeed ]; } ]
    ) "services.cim.store.settings.extra_users.0 would put a secret";
    "inline secret: a password in a provisioned stream's spec" = fires (
      f.leaf ++ [ { services.cim.provision.streams = [ { name = "X"; sources = [ { external.password = "p"; } ]; } ]; } ]
    ) "services.cim.provision.streams.0.sources.0.external.password would put a secret";
    "inline secret: a *_file key and a null value are not secrets" = {
      expr = h.failedAssertions (cfgOf (f.leaf ++ [ { services.cim.store.settings = { nats.password_file = "/run/keys/p"; token = null; }; } ]));
      expected = [ ];
    };
    "assertion: a webhook secret inline" = fires (
      hubUiModules ++ [ { services.cim.hub.webhooks.ci.secret = "shared"; } ]
    ) "services.cim.hub.settings.webhooks.0.secret would put a secret";
    "assertion: a connector's S3 key inline" = fires (
      hubUiModules ++ [ { services.cim.hub.connectors.scans.settings.secret_access_key = "xyz"; } ]
    ) "connectors.0.settings.secret_access_key would put a secret";
    "assertion: a connector secret file under a key that is not a *_file key" = fires (
      hubUiModules ++ [ { services.cim.hub.connectors.scans.secretFiles.secret_access_key = "/run/keys/x"; } ]
    ) "secretFiles.secret_access_key: secret files go to `*_file` settings keys";
    "assertion: the hub's tokens file given as a Nix path" = fires (
      hubUiModules ++ [ { services.cim.hub.tokensFile = lib.mkForce ./fixtures.nix; } ]
    ) "services.cim.hub.tokensFile is the Nix path";
    "assertion: a dashboard without a login" = fires (
      hubUiModules ++ [ { services.cim.ui.passwordFile = lib.mkForce null; } ]
    ) "the dashboard needs a login";
    "assertion: a dashboard password inline in the settings" = fires (
      hubUiModules ++ [ { services.cim.ui.settings.password = "hunter2"; } ]
    ) "services.cim.ui.settings.password would put a secret";
    "assertion: a session secret file inside the Nix store" = fires (
      hubUiModules ++ [ { services.cim.ui.sessionSecretFile = lib.mkForce "${builtins.storeDir}/x-session"; } ]
    ) "services.cim.ui.sessionSecretFile = \"${builtins.storeDir}/x-session\" is inside the Nix store";
    "assertion: nginx in front of the dashboard without a domain name" = fires (
      hubUiModules ++ [ { services.cim.ui.nginx.virtualHost = lib.mkForce null; } ]
    ) "services.cim.ui.nginx.virtualHost is not";
    "assertion: a trusted header behind nginx without nginx's basic auth" = fires (
      hubUiModules ++ [ { services.cim.ui.trustedHeader = "X-Remote-User"; } ]
    ) "nginx.basicAuthFile is not";
    "assertion: a TLS certificate without its key" = fires (
      f.leaf ++ [ { services.cim.nats.tls.client.certFile = "/run/keys/client.crt"; } ]
    ) "certFile and keyFile go together";
  };

  # The flake's outputs, evaluated as `nix flake check` and `nixos-rebuild` would.
  allTests = tests // import ./flake-tests.nix { inherit lib; };

  results = lib.mapAttrs (
    name: t:
    let
      tried = builtins.tryEval (builtins.deepSeq t.expr t.expr);
    in
    if !tried.success then
      {
        ok = false;
        got = "evaluation failed";
      }
    else
      {
        ok = tried.value == t.expected;
        got = if t ? got then t.got else tried.value;
      }
  ) allTests;
in
{
  count = builtins.length (builtins.attrNames allTests);
  failures = lib.mapAttrsToList (name: r: {
    inherit name;
    inherit (r) got;
    expected = allTests.${name}.expected;
  }) (lib.filterAttrs (_: r: !r.ok) results);
  # Rendered agent configs, for `cim config check` (tests/test_nix_eval.py).
  agentConfigs = {
    leaf-store = leaf.services.cim.store.settings;
    cluster-2-store = (node 2).services.cim.store.settings;
    attached-leaf-store = attached.services.cim.store.settings;
    leaf-registry = withRegistry.services.cim.registry.settings;
    leaf-pipeline = withPipeline.services.cim.pipeline.settings;
    leaf-tier = withTier.services.cim.tier.settings;
    leaf-hub = hubSettings;
    leaf-ui = uiSettings;
  }
  // lib.mapAttrs' (name: _: lib.nameValuePair "host-${name}-store" (host name).services.cim.store.settings) hosts;
  # The NATS permissions the modules render for each capability's user, with every
  # capability enabled, for tests/test_nix_eval.py to compare with cim.capabilities.
  renderedPermissions =
    let
      c = cfgOf (f.leaf ++ f.identities' ++ [ { services.cim = lib.genAttrs capabilities.names (_: { enable = true; }) // { outbound = { enable = true; nameservers = [ "9.9.9.9" ]; }; }; } ]);
      byKey = lib.listToAttrs (map (u: lib.nameValuePair u.nkey u) (users c));
    in
    lib.mapAttrs (name: key: byKey.${key}.permissions) f.agentKeys;

  # Each cluster node's rendered nats-server settings and the script that splices the route
  # password in at start, for tests/test_nix_eval.py to run against real nats-servers.
  clusterNats = map (
    i:
    let
      c = node i;
    in
    {
      name = c.services.cim.nodeName;
      settings = natsSettings c;
      splice = (builtins.head c.systemd.services.nats.serviceConfig.ExecStartPre).text;
    }
  ) [ 1 2 3 ];
}
