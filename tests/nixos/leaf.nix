# A leaf node boots; every enabled container reaches `active`; a unit put with `cim`
# through the host's NATS comes back byte for byte; `cim status` lists the agents.
{ self }:
let
  common = import ./common.nix { inherit self; };
in
{
  name = "cim-leaf";

  nodes.leaf = common.cimNode;

  testScript =
    { nodes, ... }:
    common.helpers
    + ''
      containers = ${builtins.toJSON (builtins.attrNames nodes.leaf.containers)}

      start_all()
      leaf.wait_for_unit("nats.service")
      install_keys(leaf)

      with subtest("provisioning creates the streams, and running it again changes nothing"):
          leaf.wait_for_unit("cim-provision.service")
          leaf.succeed("systemctl restart cim-provision.service")
          leaf.succeed(f"{CIM} provision --spec $(systemctl cat cim-provision | grep -o '/nix/store/[^ ]*cim-provision.json' | head -1) --check")

      with subtest("every enabled container reaches active"):
          wait_for_agents(leaf, containers)

      with subtest("a unit put through the host's NATS comes back unchanged"):
          leaf.succeed("head -c 100000 /dev/urandom > /tmp/unit.bin")
          put = json.loads(leaf.succeed(f"{CIM} --json units put /tmp/unit.bin"))
          cid = put[0]["cid"]
          leaf.succeed(f"{CIM} units get {cid} -o /tmp/back.bin")
          leaf.succeed("cmp /tmp/unit.bin /tmp/back.bin")

      with subtest("cim status lists the agents"):
          leaf.wait_until_succeeds(
              f"{CIM} --json status | jq -e '[.agents[].capability] | index(\"store\") != null'"
          )
    '';
}
