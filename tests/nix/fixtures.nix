# Host configurations the evaluation tests and the option docs share. Public keys only:
# they were made with `cim keys new` and their seeds thrown away.
{ lib }:
rec {
  keys = {
    store = "UDBJEDFLVNCVTWTLORJSJR3UXZJXIZGGJM2ZCFO5HWYQPJWP5CBSSBKU";
    admin = "UB2YRDJVEZM7THDKGYWC2HNWOLG4WEJ62R4KCLLAZAN4LYG3KRD6DT7S";
    hub = "UDQ37CQT45ICXC6DOMPESLRJXEA3HRFURBQ4GMDP4RZ2HYNV5J2OF5NS";
  };
  # Each capability's agent key (`cim keys new <capability>`, seeds discarded).
  agentKeys = {
    store = keys.store;
    registry = "UBURQZPXTK3F7MQWB33KCHLGPOBLSWL53Q73IIV52EDWYZHAD6VYKXOK";
    tier = "UCOJ2BQHBQ5QGYNFUWAOBXTFR4JUSX2HVN3K7RC2ZGM4GZ6Z3DLZKQ7A";
    pipeline = "UBXDUVWRGIWAK3WC7BZ2DBPY5DDQFEDT73LXJCWPEEZP74TJBN54DHCM";
    hub = "UCPXDPH4KWINP5RB2HOIHVA67YHDMHEEBR7CCHEKY27WNQIM4GQ5MM7B";
    ui = "UAKAJXSFJ6V55UOXUN2GP74A7F3IVJ4CFRKAXL6EZRBXXUGCBHCPXCLZ";
  };

  # What every capability needs once it is enabled (enabling is left to the module under
  # test, e.g. the flake's nixosModules.<capability>): identity, tokens, a login.
  identities = {
    services.cim = lib.recursiveUpdate (lib.mapAttrs (name: key: {
      nkeyPublicKey = key;
      nkeySeedFile = "/run/keys/cim-${name}.nk";
    }) agentKeys) {
      hub.tokensFile = "/run/keys/cim-hub-tokens.json";
      ui.passwordFile = "/run/keys/cim-ui-users";
    };
  };

  # The same, as a list of modules.
  identities' = [ identities ];

  # Shaped like a seed so the checks recognise it; not a real key.
  fakeSeed = "SU" + lib.concatStrings (lib.genList (_: "A") 56);

  common = {
    system.stateVersion = "26.05";
    services.cim = {
      enable = true;
      nats.adminPublicKey = keys.admin;
      provision.adminSeedFile = "/run/keys/cim-admin.nk";
    };
  };

  withStore = {
    services.cim.store = {
      enable = true;
      nkeyPublicKey = keys.store;
      nkeySeedFile = "/run/keys/cim-store.nk";
    };
  };

  leaf = [
    common
    withStore
    { networking.hostName = "leaf"; }
  ];

  nodes = [
    {
      name = "cluster-1";
      address = "10.0.0.11";
    }
    {
      name = "cluster-2";
      address = "10.0.0.12";
    }
    {
      name = "cluster-3";
      address = "10.0.0.13";
    }
  ];

  clusterNode = i: [
    common
    withStore
    {
      networking.hostName = "cluster-${toString i}";
      services.cim = {
        topology = "cluster";
        cluster.nodes = nodes;
        cluster.routePasswordFile = "/run/keys/cim-route-password";
        nats.leafnodes.publicKeys = [ keys.hub ];
      };
    }
  ];

  attachedLeaf = leaf ++ [
    {
      services.cim.nats.hub = {
        urls = map (n: "nats-leaf://${n.address}:7422") nodes;
        nkeySeedFile = "/run/keys/cim-hub.nk";
      };
    }
  ];
}
