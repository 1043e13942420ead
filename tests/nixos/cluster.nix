# Three nodes with R3 streams. A client keeps putting units (each put appends an event and
# is acknowledged only once stored) while the stream leader crashes; every acknowledged
# unit is still there afterwards, and the crashed node rejoins and catches up. A pipeline
# agent runs on every node: together they record every unit exactly once (one of them
# crashed with its node), and each answers searches completely from its own projection.
{ self }:
let
  common = import ./common.nix { inherit self; };
  names = map (i: "cluster${toString i}") [ 1 2 3 ];
  urls = map (name: "nats://${name}:4222") names;

  node =
    index:
    { ... }:
    {
      imports = [ common.cimNode ];
      services.cim = {
        topology = "cluster";
        cluster.nodes = map (name: {
          inherit name;
          address = name;
        }) names;
        # The same password file on every node, written by the script as colmena would.
        cluster.routePasswordFile = "/run/keys/cim-route-password";
        # The client machine reaches every node.
        nats.openFirewall = true;
        # One pipeline agent per node, sharing the default pipeline's durable consumer.
        pipeline = {
          enable = true;
          nkeyPublicKey = common.keys.pipeline.public;
          nkeySeedFile = "/run/keys/cim-pipeline.nk";
        };
      };
    };
in
{
  name = "cim-cluster";

  nodes = {
    cluster1 = node 1;
    cluster2 = node 2;
    cluster3 = node 3;

    client =
      { pkgs, ... }:
      {
        environment.systemPackages = [
          self.packages.${pkgs.stdenv.hostPlatform.system}.cim
          pkgs.natscli
          pkgs.jq
        ];
        # The load: put 300 small units, one line of JSON per acknowledged put.
        systemd.services.cim-load = {
          path = [ self.packages.${pkgs.stdenv.hostPlatform.system}.cim ];
          serviceConfig.Type = "exec";
          script = ''
            for i in $(seq 1 300); do
              echo "unit $i" > /tmp/unit-$i
              cim --server "${toString urls}" --nkey /run/keys/cim-admin.nk --json units put /tmp/unit-$i \
                >> /tmp/acked.jsonl || true
            done
          '';
        };
      };
  };

  testScript =
    { nodes, ... }:
    common.helpers
    + ''
      servers = [cluster1, cluster2, cluster3]
      CLIENT = "cim --server '${toString urls}' --nkey /run/keys/cim-admin.nk"
      NATS = "nats --server '${builtins.concatStringsSep "," urls}' --nkey /run/keys/cim-admin.nk"
      LAST_SEQ = """curl -s 'http://127.0.0.1:8222/jsz?accounts=true&streams=true' | jq '[.account_details[].stream_detail[]? | select(.name == "CIM_EVENTS") | .state.last_seq] | max // 0'"""


      def stream_leader():
          """The machine that leads CIM_EVENTS now."""
          name = client.succeed(f"{NATS} stream info CIM_EVENTS --json | jq -r .cluster.leader").strip()
          return next(m for m in servers if m.name == name)


      SEEDS["cim-route-password"] = "cim-vm-test-route-password"
      SEEDS["cim-pipeline.nk"] = "${common.keys.pipeline.seed}"
      DONE = """nats --server '${builtins.concatStringsSep "," urls}' --nkey /run/keys/cim-admin.nk req --raw '$JS.API.STREAM.INFO.CIM_EVENTS' '{"subjects_filter": "cim.evt.steps.*.done"}' | jq -c '.state.subjects // {}'"""

      start_all()
      with subtest("without the route password nats waits and says why"):
          cluster1.wait_until_succeeds("journalctl -u cim-keys-nats | grep -q 'nats waits for its secret files: /run/keys/cim-route-password'")
          cluster1.fail("systemctl is-active nats.service")

      for server in servers:
          install_keys(server)
          server.wait_for_unit("nats.service")

      with subtest("the route port is closed to machines that are not nodes"):
          client.fail("curl -s --max-time 5 telnet://cluster1:6222 < /dev/null")

      with subtest("a server on a node, without the route password, is refused as a route"):
          nats_server = cluster2.succeed(
              "systemctl show -p ExecStart nats.service | grep -o '/nix/store/[^ ]*/bin/nats-server' | head -1"
          ).strip()
          out = cluster2.fail(
              f"timeout 10 {nats_server} -p 4333 -a 127.0.0.1 --cluster nats://127.0.0.1:6333 --routes nats-route://cluster1:6222 -DV 2>&1"
          )
          assert "authoriz" in out.lower() or "authentication" in out.lower(), out
      client.succeed("install -d -m 0750 /run/keys")
      client.succeed(f"install -m 0600 /dev/stdin /run/keys/cim-admin.nk <<< '{SEEDS['cim-admin.nk']}'")

      with subtest("provisioning on every node makes the streams R3"):
          for server in servers:
              server.wait_for_unit("cim-provision.service")
          client.wait_until_succeeds(f"{NATS} stream info CIM_EVENTS --json | jq -e '.config.num_replicas == 3'")
          wait_for_agents(cluster1, ${builtins.toJSON (builtins.attrNames nodes.cluster1.containers)})

      with subtest("the stream leader crashes while units are put; no acknowledged one is lost"):
          client.succeed("systemctl start --no-block cim-load.service")
          client.wait_until_succeeds("[ $(wc -l < /tmp/acked.jsonl) -ge 20 ]")
          crashed = stream_leader()
          crashed.crash()
          client.wait_until_fails("systemctl is-active --quiet cim-load.service")
          acked = [json.loads(line)[0]["cid"] for line in client.succeed("cat /tmp/acked.jsonl").splitlines()]
          assert len(acked) > 20, f"only {len(acked)} puts were acknowledged"
          missing = client.succeed(
              f"for cid in {' '.join(acked)}; do {CLIENT} units show $cid > /dev/null || echo $cid; done"
          )
          assert missing.strip() == "", f"acknowledged but lost: {missing}"

      with subtest("the crashed node rejoins and catches up"):
          survivor = next(m for m in servers if m is not crashed)
          want = int(survivor.succeed(LAST_SEQ))
          crashed.start()
          install_keys(crashed)
          crashed.wait_for_unit("nats.service")
          crashed.wait_until_succeeds(f"[ $({LAST_SEQ}) -ge {want} ]")

      with subtest("a pipeline agent on every node: each acknowledged unit is recorded exactly once"):
          for server in servers:
              server.wait_until_succeeds("systemctl -M cim-pipeline is-active cim-agent.service")
          client.wait_until_succeeds(f"[ $({DONE} | jq length) -ge {len(acked)} ]", timeout=600)
          done = json.loads(client.succeed(DONE))
          for cid in acked:
              assert done.get(f"cim.evt.steps.default--{cid}.done") == 1, f"{cid}: {done.get(f'cim.evt.steps.default--{cid}.done')}"

      with subtest("each pipeline agent answers searches completely from its own projection"):
          for answering in servers:
              for other in servers:
                  if other is not answering:
                      other.succeed("systemctl stop container@cim-pipeline.service")
              answering.succeed("systemctl start container@cim-pipeline.service")
              client.wait_until_succeeds(
                  f"{CLIENT} --json search unit | jq -e '.stale == false and .indexed >= {len(acked)}'", timeout=300
              )
          for server in servers:
              server.succeed("systemctl start container@cim-pipeline.service")
    '';
}
