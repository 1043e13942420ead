# Every host, once: flake.nix turns this one list into both nixosConfigurations and the
# colmena hive. A host is { modules; deployment; }; only colmena reads `deployment`.
let
  clusterNode = import ./cluster;
in
{
  leaf = import ./leaf.nix;
}
// builtins.listToAttrs (
  map (index: {
    name = "cluster-${toString index}";
    value = clusterNode index;
  }) [ 1 2 3 ]
)
