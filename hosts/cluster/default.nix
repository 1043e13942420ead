# ONE function of the node index (1, 2 or 3) builds each cluster node: its NixOS modules
# and its colmena deployment.
index:
let
  nodes = import ./nodes.nix;
  keys = import ../keys.nix;
  self = builtins.elemAt nodes (index - 1);
  name = self.name;
in
{
  modules = [
    ../hardware.nix
    ../cim.nix
    {
      networking.hostName = name;
      services.cim = {
        topology = "cluster";
        cluster.nodes = nodes;
        # The same file on every node: routes log in with it (cim-route).
        cluster.routePasswordFile = "/run/keys/cim-route-password";
        # The leaf in ../leaf.nix attaches here.
        nats.leafnodes.publicKeys = [ keys.leaf.hub ];
        store = {
          enable = true;
          nkeyPublicKey = keys.${name}.store;
          nkeySeedFile = "/run/keys/cim-store.nk";
        };
        # A pipeline agent on every node: they share the work through each pipeline's
        # durable consumer, and each answers searches from its own projection.
        pipeline = {
          enable = true;
          nkeyPublicKey = keys.${name}.pipeline;
          nkeySeedFile = "/run/keys/cim-pipeline.nk";
        };
      };
    }
  ];

  deployment = {
    targetHost = self.address;
    tags = [ "cim-cluster" ];
    keys = import ../deploy-keys.nix name [
      "cim-admin.nk"
      "cim-store.nk"
      "cim-pipeline.nk"
      "cim-route-password"
    ];
  };
}
