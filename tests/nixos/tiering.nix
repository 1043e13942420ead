# A node runs MinIO as the warm tier; units labelled `cold` migrate there by policy and read
# back through `cim units get`; with MinIO stopped the read fails cleanly (nothing lost),
# and once MinIO is back the same read works. Pytest twin: tests/test_tier.py and
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
        minio = {
          enable = true;
          rootCredentialsFile = "/run/keys/cim-minio.env";
        };
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
    # Test-only MinIO root credentials, in the file both MinIO and the agent read.
    leaf.succeed("printf 'MINIO_ROOT_USER=cimtest\\nMINIO_ROOT_PASSWORD=cimtest-secret\\n' > /run/keys/cim-minio.env")
    leaf.succeed("chmod 0600 /run/keys/cim-minio.env")
    leaf.succeed("systemctl restart minio.service cim-minio-bucket.service container@cim-tier.service")
    wait_for_agents(leaf, ["cim-store", "cim-tier"])

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

    with subtest("with MinIO stopped a read fails cleanly"):
        leaf.succeed("systemctl stop minio.service")
        out = leaf.fail(f"{CIM} units get {cids[0]} -o /tmp/missing 2>&1")
        assert "cannot be read now" in out and "Nothing is lost" in out, out
        leaf.fail("test -e /tmp/missing")

    with subtest("MinIO started again: the read works"):
        leaf.succeed("systemctl start minio.service")
        leaf.wait_until_succeeds(f"{CIM} units get {cids[0]} -o /tmp/again && cmp /tmp/cold0 /tmp/again")
  '';
}
