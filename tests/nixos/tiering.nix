# A node runs Garage (nixpkgs' services.garage) as the warm tier, its bucket and key made at
# activation; units labelled `cold` migrate there by policy and read back through
# `cim units get`; with Garage stopped the read fails cleanly (nothing lost), and once Garage
# is back the same read works. Pytest twin: tests/test_tier.py and
# tests/test_tier_faults.py::test_an_s3_outage_mid_migration_deletes_nothing_and_migration_resumes.
{ self }:
let
  common = import ./common.nix { inherit self; };
  inherit (common) keys;
in
{
  name = "cim-tiering";

  nodes.leaf =
    { ... }:
    {
      imports = [ common.cimNode ];
      virtualisation.memorySize = 3072;
      services.cim.tier = {
        enable = true;
        nkeyPublicKey = keys.tier.public;
        nkeySeedFile = "/run/keys/cim-tier.nk";
        garage.enable = true;
        policies.labelled-cold = {
          to = "warm";
          labels = [ "cold" ];
        };
        settings = {
          migrate_interval = 5;
          read_retry_for = 2;
        };
      };
    };

  testScript = common.helpers + ''
    start_all()
    leaf.wait_for_unit("nats.service")
    install_keys(leaf)
    leaf.succeed("install -m 0600 /dev/stdin /run/keys/cim-tier.nk <<< '${keys.tier.seed}'")
    wait_for_agents(leaf, ["cim-store", "cim-tier"])

    with subtest("Garage's bucket and the tier's key were made at activation, root-only"):
        leaf.wait_for_unit("cim-garage-setup.service")
        # Garage's CLI needs its RPC secret, which only root can read.
        leaf.succeed("set -a; . /var/lib/cim-garage/garage.env; garage bucket info cim-warm")
        leaf.succeed("[ $(stat -c %a /var/lib/cim-garage/tier.env) = 600 ]")
        leaf.succeed("grep -q '^AWS_ACCESS_KEY_ID=GK' /var/lib/cim-garage/tier.env")

    with subtest("units migrate by policy and read back through cim units get"):
        cids = []
        for i in range(3):
            leaf.succeed(f"head -c {100000 + i * 7000000} /dev/urandom > /tmp/cold{i}")
            cids.append(json.loads(leaf.succeed(f"{CIM} --json units put /tmp/cold{i} --label cold"))[0]["cid"])
        leaf.succeed("echo stays hot > /tmp/hot")
        hot = json.loads(leaf.succeed(f"{CIM} --json units put /tmp/hot"))[0]["cid"]
        leaf.wait_until_succeeds(f"{CIM} tier migrate")
        leaf.wait_until_succeeds(
            f"{CIM} --json tier status | jq -e '(.tiers[] | select(.name == \"warm\") | .units) == 3 and .pending == 0'"
        )
        for i, cid in enumerate(cids):
            leaf.succeed(f"{CIM} units get {cid} -o /tmp/back{i} && cmp /tmp/cold{i} /tmp/back{i}")
        leaf.succeed(f"{CIM} units get {hot} | grep -q 'stays hot'")
        leaf.succeed(f"{CIM} tier verify")

    with subtest("with Garage stopped a read fails cleanly"):
        leaf.succeed("systemctl stop garage.service")
        out = leaf.fail(f"{CIM} units get {cids[0]} -o /tmp/missing 2>&1")
        assert "cannot be read now" in out and "Nothing is lost" in out, out
        leaf.fail("test -e /tmp/missing")

    with subtest("Garage started again: the read works"):
        leaf.succeed("systemctl start garage.service")
        leaf.wait_until_succeeds(f"{CIM} units get {cids[0]} -o /tmp/again && cmp /tmp/cold0 /tmp/again")
  '';
}
