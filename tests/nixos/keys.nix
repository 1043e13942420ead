# TEST-ONLY identities for the VM tests. The seeds are public (they are in git) and guard
# nothing. They reach the VMs only through the test script, which writes them to /run/keys
# the way colmena does, so they are never part of a node's system closure; the security
# test checks exactly that.
{
  admin = {
    seed = "SUAHBF7X2CBQVBTXW3UNRV6CU4GIIAXMHKLXMFYFO54I43WP6S5XIUOJEE";
    public = "UDHS462ZM4QUOUCTKCZCTYBJN4LCWRM6AHKA5V7UXQNLL5R3WXA3DCJJ";
  };
  store = {
    seed = "SUAI43VVHVR6EQZSQI4DRFXN24VB6Z5G3TKBOOQEHRQP5KK2OBMI3LAKDI";
    public = "UDN7TFLW7CEIKB6SAWJ5PCJP3HFBD3HAYCWR2S57DIY3PA5T7FFHDYOU";
  };
  tier = {
    seed = "SUAN3Q7LOBF2IX4FKAQKEYIOJESP4526ZFY3VXLNYSBSGGDQC3FMRYWPMY";
    public = "UBP7ISDAKLSLO4FUA3GTFPEFPLBO5G2LMYMYJQMXKCZA6PXUE4KXJMMQ";
  };
  pipeline = {
    seed = "SUAPJI33L2VBAFXCMJA3LBHXWSDT53FISWANY2S7F3B225QNNSGABGIM5M";
    public = "UDTKLOFY66FT6A7RD46O7ZGFMRUBIEYKECUCVRA6P4QLM4PIOWDUKYSE";
  };
}
