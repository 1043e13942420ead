# A leaf node boots; every enabled container reaches `active`; a unit put with `cim`
# through the host's NATS comes back byte for byte; `cim status` lists the agents; a unit
# POSTed to the hub's ingest API with a token shows on the dashboard's page after a login;
# another machine on the network cannot reach the hub or the dashboard (nothing forwarded).
# Pytest twin of the hub and UI steps: tests/test_up_hub_ui.py.
{ self }:
let
  common = import ./common.nix { inherit self; };
  inherit (common) keys;
  # Test-only login material, written to /run/keys by the script (never in the closure).
  token = "cim-vm-test-token-0123456789";
  password = "cim-vm-test-password";
in
{
  name = "cim-leaf";

  nodes.client = { pkgs, ... }: { environment.systemPackages = [ pkgs.curl ]; };

  nodes.leaf =
    { ... }:
    {
      imports = [ common.cimNode ];
      services.cim.hub = {
        enable = true;
        nkeyPublicKey = keys.hub.public;
        nkeySeedFile = "/run/keys/cim-hub-agent.nk";
        tokensFile = "/run/keys/cim-hub-tokens.json";
      };
      services.cim.ui = {
        enable = true;
        nkeyPublicKey = keys.ui.public;
        nkeySeedFile = "/run/keys/cim-ui.nk";
        passwordFile = "/run/keys/cim-ui-users";
      };
    };

  testScript =
    { nodes, ... }:
    common.helpers
    + ''
      containers = ${builtins.toJSON (builtins.attrNames nodes.leaf.containers)}

      HUB = "http://${nodes.leaf.services.cim.hub.localAddress}:${toString nodes.leaf.services.cim.hub.port}"
      UI = "http://${nodes.leaf.services.cim.ui.localAddress}:${toString nodes.leaf.services.cim.ui.port}"

      start_all()
      leaf.wait_for_unit("nats.service")
      install_keys(leaf)
      leaf.succeed("install -m 0600 /dev/stdin /run/keys/cim-hub-agent.nk <<< '${keys.hub.seed}'")
      leaf.succeed("install -m 0600 /dev/stdin /run/keys/cim-ui.nk <<< '${keys.ui.seed}'")
      leaf.succeed("""install -m 0600 /dev/stdin /run/keys/cim-hub-tokens.json <<< '{"tokens": [{"name": "vm", "token": "${token}"}]}'""")
      leaf.succeed("printf '%s' '${password}' | cim ui hash-password admin > /run/keys/cim-ui-users && chmod 0600 /run/keys/cim-ui-users")

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

      with subtest("curl the ingest API with a token"):
          leaf.wait_until_succeeds(f"curl -sf {HUB}/healthz")
          leaf.fail(f"curl -sf -X POST --data-binary 'no token' {HUB}/v1/units")
          put = json.loads(leaf.succeed(
              f"curl -sf -X POST -H 'Authorization: Bearer ${token}' -H 'Content-Type: text/plain' "
              f"--data-binary 'via the hub' '{HUB}/v1/units?title=from-curl'"
          ))
          hub_cid = put["cid"]
          leaf.succeed(f"{CIM} units get {hub_cid} | grep -q 'via the hub'")

      with subtest("another machine cannot reach the hub or the dashboard: nothing is forwarded"):
          client.succeed("ping -c 1 leaf")
          for port in (${toString nodes.leaf.services.cim.hub.port}, ${toString nodes.leaf.services.cim.ui.port}):
              client.fail(f"curl -sf --max-time 5 http://leaf:{port}/healthz")

      with subtest("fetch the UI page and see the unit"):
          leaf.wait_until_succeeds(f"curl -sf {UI}/healthz")
          page = leaf.wait_until_succeeds(
              f"curl -sf -L -c /tmp/ui.jar -b /tmp/ui.jar -H 'Origin: {UI}' "
              f"--data-urlencode user=admin --data-urlencode password=${password} "
              f"--data-urlencode next=/units/{hub_cid} {UI}/login"
          )
          assert "from-curl" in page and hub_cid in page, page
    '';
}
