# What every CIM host of the example fleet shares.
{
  system.stateVersion = "26.05";
  services.cim = {
    enable = true;
    nats.adminPublicKey = (import ./keys.nix).admin;
    provision.adminSeedFile = "/run/keys/cim-admin.nk";
  };
}
