# The store's credential cannot purge or delete a stream it does not own, nor purge or hide
# content, and no seed is
# in the system closure. A reboot empties /run/keys (colmena's keys live there): the units
# wait for their keys and say so, and come up once the keys are back. A key replaced by a
# new file (as colmena and agenix write them) restarts the container that mounts it.
{ self }:
let
  common = import ./common.nix { inherit self; };
in
{
  name = "cim-security";

  nodes.leaf = common.cimNode;

  testScript = common.helpers + ''
    # The store agent's own inbox prefix: the only replies its credential may read.
    AS_STORE = "nats --server nats://127.0.0.1:4222 --nkey /run/keys/cim-store.nk --inbox-prefix _INBOX.store"
    AS_ADMIN = "nats --server nats://127.0.0.1:4222 --nkey /run/keys/cim-admin.nk"

    start_all()
    leaf.wait_for_unit("nats.service")
    install_keys(leaf)
    leaf.wait_for_unit("cim-provision.service")
    wait_for_agents(leaf, ["cim-store"])

    with subtest("the store credential may not purge or delete the event stream"):
        leaf.succeed(f"{CIM} units put /etc/hostname")
        before = leaf.succeed(f"{AS_ADMIN} stream info CIM_EVENTS --json | jq .state.messages").strip()
        assert int(before) > 0
        leaf.fail(f"{AS_STORE} stream purge CIM_EVENTS --force")
        leaf.fail(f"{AS_STORE} stream rm CIM_EVENTS --force")
        after = leaf.succeed(f"{AS_ADMIN} stream info CIM_EVENTS --json | jq .state.messages").strip()
        assert after == before, f"CIM_EVENTS went from {before} to {after} messages"

    with subtest("the store credential cannot forge another capability's event"):
        forged = "cim.evt.unit.bafkreiforgedbystore.expired"
        leaf.succeed(f"{AS_STORE} pub {forged} '{{}}' || true")
        leaf.fail(f"{AS_ADMIN} stream get CIM_EVENTS --last-for {forged}")
        # Its own event types it may append (the refusal is the server's, by type).
        leaf.succeed(f"{AS_STORE} stream info CIM_EVENTS")

    with subtest("the store credential can neither purge content nor hide it behind a forged entry"):
        import base64, json, shlex
        leaf.succeed("head -c 300000 /dev/urandom > /tmp/precious.bin")
        cid = json.loads(leaf.succeed(f"{CIM} --json units put /tmp/precious.bin"))[0]["cid"]
        before = int(leaf.succeed(f"{AS_ADMIN} stream info OBJ_CIM_CONTENT --json | jq .state.messages"))
        leaf.fail(f"{AS_STORE} stream purge OBJ_CIM_CONTENT --force")
        meta = "$O.CIM_CONTENT.M." + base64.urlsafe_b64encode(cid.encode()).decode()
        # A rolled-up deleted marker is refused by the bucket; a plain one is only appended.
        marker = shlex.quote(json.dumps({"deleted": True}))
        leaf.succeed(f"{AS_STORE} pub '{meta}' {marker} -H Nats-Rollup:sub || true")
        leaf.succeed(f"{AS_STORE} pub '{meta}' {marker}")
        # Appended, nothing taken away: one message more (a core publish is stored shortly after).
        leaf.wait_until_succeeds(
            f"[ $({AS_ADMIN} stream info OBJ_CIM_CONTENT --json | jq .state.messages) -eq {before + 1} ]", timeout=30)
        leaf.succeed(f"{CIM} units get {cid} -o /tmp/precious.back && cmp /tmp/precious.bin /tmp/precious.back")

    with subtest("the admin credential may (the refusal above is about permissions)"):
        leaf.succeed(f"{AS_ADMIN} stream info CIM_EVENTS")

    with subtest("the system closure holds public keys but no seed"):
        closure = "nix-store -qR /run/current-system | xargs grep -rlsF"
        # The grep works: the store's public key is in the rendered NATS config.
        assert leaf.succeed(f"{closure} '${common.keys.store.public}' || true").strip() != ""
        for name, seed in SEEDS.items():
            found = leaf.succeed(f"{closure} '{seed}' || true").strip()
            assert found == "", f"the seed of {name} is in the Nix store: {found}"
  
    with subtest("a rebooted host without its keys: the units wait and say which file they wait for"):
        leaf.crash()
        leaf.start()
        leaf.wait_for_unit("nats.service")
        leaf.wait_until_succeeds(
            "journalctl -b -u cim-keys-container-cim-store | grep -q 'container@cim-store waits for its secret files: /run/keys/cim-store.nk'"
        )
        leaf.wait_until_succeeds("journalctl -b -u cim-keys-cim-provision | grep -q 'cim-admin.nk'")
        status = leaf.succeed("systemctl status container@cim-store.service cim-keys-container-cim-store.service 2>&1 || true")
        print(status)
        leaf.fail("systemctl is-active container@cim-store.service")
        leaf.fail("systemctl is-failed container@cim-store.service")

    with subtest("the keys uploaded again: everything comes up without a restart by hand"):
        install_keys(leaf)
        leaf.wait_for_unit("cim-provision.service")
        wait_for_agents(leaf, ["cim-store"])
        leaf.succeed(f"{CIM} units put /etc/hostname")

    with subtest("a key uploaded again unchanged restarts nothing (colmena re-uploads every key on apply)"):
        before = leaf.succeed("systemctl show -p InvocationID --value container@cim-store.service").strip()
        runs = "journalctl -u cim-keys-container-cim-store -o cat | grep -c '^Finished' || true"
        seen = int(leaf.succeed(runs))
        install_keys(leaf, {"cim-store.nk": SEEDS["cim-store.nk"]})
        leaf.wait_until_succeeds(f"[ $({runs}) -gt {seen} ]")
        after = leaf.succeed("systemctl show -p InvocationID --value container@cim-store.service").strip()
        assert after == before, "an unchanged key restarted the container"

    with subtest("a key whose content changed restarts the container that mounts it"):
        # The same seed with a trailing newline: other bytes, the same identity.
        install_keys(leaf, {"cim-store.nk": SEEDS["cim-store.nk"] + "\n"})
        leaf.wait_until_succeeds(
            f"[ \"$(systemctl show -p InvocationID --value container@cim-store.service)\" != '{before}' ]"
        )
        wait_for_agents(leaf, ["cim-store"])
        leaf.succeed(f"{CIM} units put /etc/hostname")
  '';
}
