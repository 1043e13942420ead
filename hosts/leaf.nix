# A leaf node: NATS with JetStream on one host, the store capability, attached as a
# leaf to the cluster in ./cluster.
let
  keys = import ./keys.nix;
  clusterNodes = import ./cluster/nodes.nix;
in
{
  modules = [
    ./hardware.nix
    ./cim.nix
    {
      networking.hostName = "leaf";
      services.cim = {
        topology = "leaf";
        store = {
          enable = true;
          nkeyPublicKey = keys.leaf.store;
          nkeySeedFile = "/run/keys/cim-store.nk";
        };
        # Remove this block for a stand-alone leaf.
        nats.hub = {
          urls = map (node: "nats-leaf://${node.address}:7422") clusterNodes;
          nkeySeedFile = "/run/keys/cim-hub.nk";
        };
      };
    }
  ];

  deployment = {
    targetHost = "10.0.0.10";
    tags = [ "cim-leaf" ];
    keys = import ./deploy-keys.nix "leaf" [
      "cim-admin.nk"
      "cim-store.nk"
      "cim-hub.nk"
    ];
  };
}
