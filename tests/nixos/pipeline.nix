# A file put on the leaf is classified and indexed by the pipeline agent in its container,
# and found with `cim search`: the same commands as tests/test_up.py's newcomer test.
{ self }:
let
  common = import ./common.nix { inherit self; };
in
{
  name = "cim-pipeline";

  nodes.leaf = {
    imports = [ common.cimNode ];
    services.cim.pipeline = {
      enable = true;
      nkeyPublicKey = common.keys.pipeline.public;
      nkeySeedFile = "/run/keys/cim-pipeline.nk";
      pipelines.default.steps = map (s: {
        name = s;
        plugin = s;
      }) [ "classify" "extract" "index" ];
    };
  };

  testScript = common.helpers + ''
    start_all()
    leaf.wait_for_unit("nats.service")
    install_keys(leaf)
    leaf.succeed("install -m 0600 /dev/stdin /run/keys/cim-pipeline.nk <<< '${common.keys.pipeline.seed}'")
    leaf.succeed("systemctl restart container@cim-pipeline.service")
    wait_for_agents(leaf, ["cim-store", "cim-pipeline"])

    with subtest("a document put on the leaf is classified and indexed"):
        leaf.succeed("mkdir -p /tmp/docs && echo '# Herons' > /tmp/docs/heron.md")
        leaf.succeed("echo 'The grey heron waits in shallow water.' >> /tmp/docs/heron.md")
        cid = leaf.succeed(f"{CIM} units put /tmp/docs").split()[0]
        leaf.wait_until_succeeds(f"{CIM} events tail | grep -q 'unit.labeled {cid}'")

    with subtest("cim search finds it"):
        leaf.wait_until_succeeds(f"{CIM} --json search heron | jq -e '.hits[0].cid == \"{cid}\"'")

    with subtest("cim pipelines ls shows the pipeline running"):
        leaf.succeed(f"{CIM} pipelines ls | grep -q 'default .*running'")
  '';
}
