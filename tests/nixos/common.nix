# What the VM tests share: a CIM node configured as a user would, and the script helpers.
{ self }:
let
  keys = import ./keys.nix;
in
{
  inherit keys;

  # A CIM host with the store capability; seeds are expected in /run/keys.
  cimNode =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      # mkDefault: a test that needs more (tiering) sets its own size.
      virtualisation.memorySize = lib.mkDefault 2048;
      environment.systemPackages = [
        pkgs.natscli
        pkgs.jq
        pkgs.curl
      ];
      services.cim = {
        enable = true;
        nats.adminPublicKey = keys.admin.public;
        provision.adminSeedFile = "/run/keys/cim-admin.nk";
        store = {
          enable = true;
          nkeyPublicKey = keys.store.public;
          nkeySeedFile = "/run/keys/cim-store.nk";
        };
      };
    };

  # Python prepended to each test script.
  helpers = ''
    import json

    SEEDS = {
        "cim-admin.nk": "${keys.admin.seed}",
        "cim-store.nk": "${keys.store.seed}",
    }
    CIM = "cim --nkey /run/keys/cim-admin.nk"


    def install_keys(machine, seeds=SEEDS):
        """Put the seeds where colmena's deployment.keys would. Nothing is restarted: every
        unit that needs a key waits for it (cim-keys-*.service) and starts once it is there."""
        machine.succeed("install -d -m 0750 /run/keys")
        for name, seed in seeds.items():
            machine.succeed(f"install -m 0600 /dev/stdin /run/keys/{name}.tmp <<< '{seed}' && mv /run/keys/{name}.tmp /run/keys/{name}")


    def wait_for_agents(machine, containers):
        """Every container is up and its agent unit active."""
        for container in containers:
            machine.wait_for_unit(f"container@{container}.service")
            machine.wait_until_succeeds(f"systemctl -M {container} is-active cim-agent.service")
  '';
}
