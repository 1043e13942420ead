# Public nkeys of the example fleet. Public keys only: they are safe in git and in the Nix
# store. Replace each with the key `cim keys new` prints for your deployment (the seeds
# go to secrets/<host>/, which colmena uploads; see ./deploy-keys.nix).
{
  admin = "UANYVLNBGOGVFRVYVMTGYOUEIWRS23SAY7OWJECTBV53EQR6H62MXIXM";
  leaf = {
    store = "UCRRJKKB4KOOUKQMVK4HVA4JIKQRVXXT3RANAY73AW6Y7OVV6SDWE6FM";
    # The leaf's identity on the cluster it attaches to.
    hub = "UDVU3KLXQRAIOSEYZ3OIXYBC43PJNJ2FSCARJFWO6LZL7Y36XQU7LTMW";
  };
  cluster-1.store = "UDBF2ZKFYBAX5CFDXNAUJQYS4P6V4CJ6F3TO3TOWKVQCUUVSY3DGGENU";
  cluster-2.store = "UB7CCQZ3R4FPIIC5PCQUHDCSYQN47SROMUTWEJZBBNT5RZARXTLXC7UP";
  cluster-3.store = "UCGPL3EVKDXOGFIJKGKEEFL3ST2FONBYNBJ5FN4YOF5TOEBFHN7UPQLX";
  # One pipeline agent per node: they share each pipeline's durable consumer.
  cluster-1.pipeline = "UBJ5JT6ITQHYBKQGCUFJJIA4ZLELBZQ5IJVW2GO7U7NCWJOORA2ZTGRI";
  cluster-2.pipeline = "UDGZ7FWGEIK4YSOMJLI5F3FKF45H5M2RLXKFKTQJR5BKRLMNRXV75LIY";
  cluster-3.pipeline = "UB4FIUP4PMKNOEXXIDWUNI23D5RL7MHZVPZGYG6PNA3NLE7NJMBFHSJD";
}
