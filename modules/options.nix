# The top-level services.cim options: on or off, which package, and where this host sits
# (a single leaf, or one member of a 3-node cluster).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.cim;
  secrets = import ./secrets.nix { inherit lib; };

  nodeType = lib.types.submodule {
    options = {
      name = lib.mkOption {
        type = lib.types.strMatching "[A-Za-z0-9_-]+";
        example = "cluster-1";
        description = ''
          The node's name. It becomes the NATS `server_name`, so it must be unique in the
          cluster and equal {option}`services.cim.nodeName` on that node.
        '';
      };
      address = lib.mkOption {
        type = lib.types.str;
        example = "10.0.0.11";
        description = "Address (IP or DNS name) the other nodes reach this node's NATS routes on.";
      };
    };
  };
in
{
  options.services.cim = {
    enable = lib.mkEnableOption "CIM, the Composable Information Machine (NATS JetStream on this host, provisioning, and the capabilities enabled below)";

    package = lib.mkOption {
      type = lib.types.package;
      # Built from this checkout, so the modules work imported by path as well as through
      # the flake. With the flake's overlay applied, `pkgs.cim` is the same package.
      default = pkgs.callPackage ../package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The `cim` package: the agents and the `cim` command.";
    };

    topology = lib.mkOption {
      type = lib.types.enum [
        "leaf"
        "cluster"
      ];
      default = "leaf";
      description = ''
        `leaf`: one NATS server with JetStream on this host; streams get 1 replica.
        `cluster`: this host is one of the nodes in {option}`services.cim.cluster.nodes`;
        the servers are joined by routes and streams get 3 replicas.
      '';
    };

    nodeName = lib.mkOption {
      type = lib.types.strMatching "[A-Za-z0-9_-]+";
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This node's name: the NATS `server_name`, and its entry in {option}`services.cim.cluster.nodes`.";
    };

    cluster = {
      name = lib.mkOption {
        type = lib.types.strMatching "[A-Za-z0-9_-]+";
        default = "cim";
        description = "The NATS cluster name, the same on every node.";
      };

      nodes = lib.mkOption {
        type = lib.types.listOf nodeType;
        default = [ ];
        example = lib.literalExpression ''
          [
            { name = "cluster-1"; address = "10.0.0.11"; }
            { name = "cluster-2"; address = "10.0.0.12"; }
            { name = "cluster-3"; address = "10.0.0.13"; }
          ]
        '';
        description = ''
          Every member of the cluster, this node included, with the same list on each node.
          Each node routes to all the others and never to itself.
        '';
      };

      routePort = lib.mkOption {
        type = lib.types.port;
        default = 6222;
        description = "Port of the NATS cluster routes. The firewall opens it only to the other nodes' addresses.";
      };

      routePasswordFile = lib.mkOption {
        type = secrets.fileType;
        default = null;
        example = "/run/keys/cim-route-password";
        description = ''
          File outside the Nix store with the password of the route user `cim-route`, the same
          file content on every node (e.g. `head -c 32 /dev/urandom | base64 | tr -d '/+='`).
          A node accepts a route only with it, and dials the others with it. The password is
          spliced into the server's config under /run at start; it never enters the store.
        '';
      };

      unauthenticatedRoutes = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          Accept cluster routes without authentication. A route is a server-to-server link that
          bypasses every agent's permissions, so a cluster refuses to evaluate without
          {option}`services.cim.cluster.routePasswordFile` or route TLS with verification
          ({option}`services.cim.nats.tls.route`), unless this is set: only for a network that
          nothing but the nodes can reach.
        '';
      };
    };
  };
}
