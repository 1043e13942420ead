# Mistakes caught at evaluation time, each with a message that says what to change.
{
  config,
  lib,
  ...
}:
let
  capabilities = import ./capabilities.nix;
  secrets = import ./secrets.nix { inherit lib; };
  top = config.services.cim;
  nodeNames = map (node: node.name) top.cluster.nodes;
  nodeAddresses = map (node: node.address) top.cluster.nodes;
  duplicates = list: lib.unique (builtins.filter (x: lib.count (y: y == x) list > 1) list);

  enabled = builtins.filter (name: top.${name}.enable) capabilities.names;

  problem = message: {
    assertion = false;
    inherit message;
  };
  check = cond: message: { assertion = cond; inherit message; };
  fileChecks =
    files:
    map problem (lib.filter (m: m != null) (lib.mapAttrsToList secrets.fileProblem files));
  keyChecks =
    keys:
    map problem (lib.filter (m: m != null) (lib.mapAttrsToList secrets.publicKeyProblem keys));

  capabilityChecks =
    name:
    let
      cfg = top.${name};
      opt = "services.cim.${name}";
    in
    [
      (check top.enable "${opt}.enable is set but services.cim.enable is not: the agent needs the host's NATS server. Set services.cim.enable = true.")
      (check config.services.nats.enable "${opt}.enable is set but services.nats.enable is false: the agent needs the host's NATS server. Remove the override of services.nats.enable.")
      (check (cfg.nkeyPublicKey != null) "${opt}.nkeyPublicKey is not set: NATS would not let the agent in. Run `cim keys new ${name}` and put the public key it prints there.")
      (check (cfg.nkeySeedFile != null) "${opt}.nkeySeedFile is not set: the agent has no identity. Point it at the seed file `cim keys new ${name}` wrote (e.g. \"/run/keys/cim-${name}.nk\").")
      (check (cfg.instances == 1 || capabilities.scales name) "${opt}.instances is ${toString cfg.instances}, but the ${name} agent's work is not shared between instances (only pipeline and hub scale out). Set it to 1.")
    ]
    ++ fileChecks ({ "${opt}.nkeySeedFile" = cfg.nkeySeedFile; } // lib.mapAttrs' (id: f: lib.nameValuePair "${opt}.secretFiles.${id}" f) cfg.secretFiles)
    ++ keyChecks { "${opt}.nkeyPublicKey" = cfg.nkeyPublicKey; }
    ++ map (path: problem (secrets.inlineSecretMessage path)) (secrets.inlineSecrets "${opt}.settings" cfg.settings);

  tlsChecks = lib.concatLists (
    lib.mapAttrsToList (
      kind: t:
      let
        opt = "services.cim.nats.tls.${kind}";
      in
      [
        (check ((t.certFile == null) == (t.keyFile == null)) "${opt}: certFile and keyFile go together; set both or neither.")
        (check (t.caFile == null || t.certFile != null) "${opt}.caFile is set without certFile and keyFile; TLS needs this server's own certificate too.")
      ]
      ++ fileChecks {
        "${opt}.keyFile" = t.keyFile;
      }
    ) top.nats.tls
  );
in
{
  config = lib.mkMerge [
    { assertions = lib.concatMap capabilityChecks enabled; }
    (lib.mkIf top.enable {
      assertions = [
        (check (top.topology != "cluster" || builtins.length top.cluster.nodes >= 3)
          "services.cim.topology = \"cluster\" needs at least 3 nodes in services.cim.cluster.nodes (it has ${toString (builtins.length top.cluster.nodes)}): JetStream needs a majority to survive the loss of one node. Add the missing nodes, or set services.cim.topology = \"leaf\"."
        )
        (check (top.topology != "cluster" || builtins.elem top.nodeName nodeNames)
          "services.cim.nodeName = \"${top.nodeName}\" is not in services.cim.cluster.nodes (${lib.concatStringsSep ", " nodeNames}): a node must be in its own node list. Add it, or set services.cim.nodeName to its name there."
        )
        (check (duplicates nodeNames == [ ])
          "services.cim.cluster.nodes names ${lib.concatStringsSep ", " (duplicates nodeNames)} more than once; every node needs its own name."
        )
        (check (duplicates nodeAddresses == [ ])
          "services.cim.cluster.nodes gives the address ${lib.concatStringsSep ", " (duplicates nodeAddresses)} to more than one node; every node needs its own address."
        )
        (check (
          top.topology != "cluster"
          || top.cluster.routePasswordFile != null
          || (top.nats.tls.route.certFile != null && top.nats.tls.route.caFile != null && top.nats.tls.route.verify)
          || top.cluster.unauthenticatedRoutes
        ) "services.cim.topology = \"cluster\" without route authentication: any server that reaches port ${toString top.cluster.routePort} could join as a route and bypass every agent's permissions. Set services.cim.cluster.routePasswordFile (the same password file on every node), or route TLS with verification (services.cim.nats.tls.route.certFile, keyFile and caFile), or, only on a network nothing else can reach, services.cim.cluster.unauthenticatedRoutes = true.")
        (check (
          top.topology != "cluster"
          || !config.networking.nftables.enable
          || lib.all (a: lib.hasInfix ":" a || builtins.match "[0-9.]+(/[0-9]+)?" a != null) nodeAddresses
        ) "services.cim.cluster.nodes has DNS names (${lib.concatStringsSep ", " nodeAddresses}), but with networking.nftables.enable the route port is opened by address in nftables rules, which take IP addresses only. Give the nodes' IP addresses.")
        (check (top.nats.hub.urls == [ ] || top.nats.hub.nkeySeedFile != null)
          "services.cim.nats.hub.urls is set but services.cim.nats.hub.nkeySeedFile is not: the hub would refuse this leaf. Run `cim keys new hub`, set the seed file here and add the public key to the hub's services.cim.nats.leafnodes.publicKeys."
        )
        (check (!top.provision.enable || top.provision.adminSeedFile != null)
          "services.cim.provision is enabled but services.cim.provision.adminSeedFile is not set: provisioning could not log in to NATS. Run `cim keys new admin`, set adminSeedFile to the seed file and services.cim.nats.adminPublicKey to the public key."
        )
        (check (!top.provision.enable || top.nats.adminPublicKey != null)
          "services.cim.provision is enabled but services.cim.nats.adminPublicKey is not set: NATS has no operator user. Set it to the public key `cim keys new admin` printed."
        )
      ]
      ++ fileChecks {
        "services.cim.nats.hub.nkeySeedFile" = top.nats.hub.nkeySeedFile;
        "services.cim.cluster.routePasswordFile" = top.cluster.routePasswordFile;
        "services.cim.provision.adminSeedFile" = top.provision.adminSeedFile;
      }
      ++ keyChecks (
        { "services.cim.nats.adminPublicKey" = top.nats.adminPublicKey; }
        // lib.listToAttrs (
          lib.imap0 (i: key: lib.nameValuePair "services.cim.nats.leafnodes.publicKeys.${toString i}" key) top.nats.leafnodes.publicKeys
        )
      )
      ++ tlsChecks
      ++ map (path: problem (secrets.inlineSecretMessage path)) (
        secrets.inlineSecrets "services.cim.provision" { inherit (top.provision) streams consumers kv objects; }
      );
    })
  ];
}
