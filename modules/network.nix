# Outbound network for the containers whose work reaches past this host: the hub's webhooks
# and S3 import, the tier's remote S3 tiers and the archive (Wasabi). With `privateNetwork`
# a container has only its link to the host; this adds NAT for those links and a resolver
# the container can reach. Off by default; a configured outbound feature without it fails
# evaluation with what to set.
{ config, lib, ... }:
let
  top = config.services.cim;
  cfg = top.outbound;

  # The capabilities that may go out, of those switched on.
  outboundCapabilities = builtins.filter (name: top.${name}.enable) [ "hub" "tier" ];

  # What is configured that needs the way out, by option path.
  isLocal = endpoint: endpoint != null && lib.hasPrefix "http://${top.tier.hostAddress}:" endpoint;
  needs =
    lib.optionals top.hub.enable (
      map (name: "services.cim.hub.webhooks.${name}") (builtins.attrNames top.hub.webhooks)
      ++ map (name: "services.cim.hub.connectors.${name}") (
        builtins.attrNames (lib.filterAttrs (_: c: c.plugin == "s3-import") top.hub.connectors)
      )
    )
    ++ lib.optionals top.tier.enable (
      lib.optional top.tier.archive.enable "services.cim.tier.archive"
      ++ map (name: "services.cim.tier.tiers.${name}") (
        builtins.attrNames (lib.filterAttrs (_: t: lib.hasPrefix "s3://" t.url && !isLocal t.endpoint) top.tier.tiers)
      )
    );
in
{
  options.services.cim.outbound = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Let the `hub` and `tier` containers reach other hosts: NAT on the host for their
        `ve-cim-*` links (nixpkgs' `networking.nat`) and {option}`services.cim.outbound.nameservers`
        as their resolver. Needed for webhooks, S3 import, remote S3 tiers and the archive;
        the other containers keep only their link to the host either way.
      '';
    };

    externalInterface = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "eth0";
      description = "The interface NATed traffic leaves by (`networking.nat.externalInterface`); `null` masquerades on every interface.";
    };

    nameservers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = config.networking.nameservers;
      defaultText = lib.literalExpression "config.networking.nameservers";
      example = [ "9.9.9.9" ];
      description = ''
        DNS servers inside the outbound containers. Not the host's resolv.conf: it often
        names a resolver on the host's loopback (systemd-resolved's 127.0.0.53), which a
        container with its own network cannot reach.
      '';
    };
  };

  config = lib.mkIf top.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = cfg.enable || needs == [ ];
            message = "${lib.concatStringsSep ", " needs} must reach other hosts, but services.cim.outbound.enable is false, so the containers have no route out (\"network unreachable\"). Set services.cim.outbound.enable = true (and services.cim.outbound.nameservers if networking.nameservers is empty).";
          }
          {
            assertion = !cfg.enable || outboundCapabilities == [ ] || cfg.nameservers != [ ];
            message = "services.cim.outbound.enable is set but services.cim.outbound.nameservers is empty (networking.nameservers is too): the containers could not resolve a host name. Set it, e.g. [ \"9.9.9.9\" ] or your network's resolver.";
          }
        ];
      }
      (lib.mkIf (cfg.enable && outboundCapabilities != [ ]) {
        networking.nat = {
          enable = true;
          internalInterfaces = map (name: "ve-cim-${name}") outboundCapabilities;
          externalInterface = lib.mkIf (cfg.externalInterface != null) cfg.externalInterface;
        };
        containers = lib.genAttrs (map (name: "cim-${name}") outboundCapabilities) (_: {
          config.networking = {
            useHostResolvConf = false;
            inherit (cfg) nameservers;
          };
        });
      })
    ]
  );
}
