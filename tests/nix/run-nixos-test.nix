# A stand-in for nixpkgs' `testers.runNixOSTest` that builds nothing: it evaluates every
# node of a VM test the way the test driver would (the test framework's qemu-vm options, the
# node's name as its host name, `nodes` passed to every node) and renders the test script
# against those nodes. An option conflict in a test's nodes fails here, not on a NixOS
# user's machine.
{ lib, evalNixos }:
test:
let
  nodes = lib.mapAttrs (
    name: node:
    (evalNixos [
      ./nixos/qemu-vm.nix
      {
        networking.hostName = lib.mkDefault name;
        _module.args.nodes = nodes;
      }
      node
    ]).config
  ) test.nodes;
in
{
  type = "derivation";
  name = "vm-test-run-${test.name}";
  outPath = "${builtins.storeDir}/vm-test-run-${test.name}";
  inherit nodes;
  testScript = if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
}
