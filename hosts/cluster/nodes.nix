# The three cluster members: one list, read by every node and by the leaf that attaches.
[
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
]
