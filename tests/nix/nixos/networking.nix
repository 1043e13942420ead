# Networking options the CIM modules and their users set beside the firewall ports (which
# ../nixos-options.nix declares), as nixpkgs declares them (NixOS/nixpkgs paths per block).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  fw = config.networking.firewall;
  nat = config.networking.nat;
in
{
  options.networking = {
    # nixos/modules/tasks/network-interfaces.nix.
    nameservers = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    useHostResolvConf = mkOption {
      type = types.bool;
      default = false;
    };
    useDHCP = mkOption {
      type = types.bool;
      default = true;
    };
    enableIPv6 = mkOption {
      type = types.bool;
      default = true;
    };

    # nixos/modules/services/networking/nat.nix.
    nat = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      enableIPv6 = mkOption {
        type = types.bool;
        default = false;
      };
      internalInterfaces = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      internalIPs = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      externalInterface = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      externalIP = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      forwardPorts = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              sourcePort = mkOption { type = types.either types.int (types.strMatching "[[:digit:]]+:[[:digit:]]+"); };
              destination = mkOption { type = types.str; };
              proto = mkOption {
                type = types.str;
                default = "tcp";
              };
              loopbackIPs = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        );
        default = [ ];
      };
      dmzHost = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      # nixos/modules/services/networking/nat-iptables.nix.
      extraCommands = mkOption {
        type = types.lines;
        default = "";
      };
      extraStopCommands = mkOption {
        type = types.lines;
        default = "";
      };
    };

    firewall = {
      # nixos/modules/services/networking/firewall-iptables.nix.
      extraCommands = mkOption {
        type = types.lines;
        default = "";
      };
      extraStopCommands = mkOption {
        type = types.lines;
        default = "";
      };
      # nixos/modules/services/networking/firewall-nftables.nix.
      extraInputRules = mkOption {
        type = types.lines;
        default = "";
      };
      extraForwardRules = mkOption {
        type = types.lines;
        default = "";
      };
      # nixos/modules/services/networking/firewall.nix.
      filterForward = mkOption {
        type = types.bool;
        default = false;
      };
    };

    # nixos/modules/services/networking/nftables.nix.
    nftables.enable = mkOption {
      type = types.bool;
      default = false;
    };
  };

  # nixos/modules/system/boot/resolved.nix.
  options.services.resolved.enable = mkOption {
    type = types.bool;
    default = false;
  };

  config = {
    assertions = [
      # firewall-nftables.nix and nat-nftables.nix: iptables commands mean nothing there.
      {
        assertion = config.networking.nftables.enable -> fw.extraCommands == "" && fw.extraStopCommands == "";
        message = "extraCommands and extraStopCommands are incompatible with the nftables based firewall";
      }
      {
        assertion = config.networking.nftables.enable -> nat.extraCommands == "" && nat.extraStopCommands == "";
        message = "extraCommands is incompatible with the nftables based nat module";
      }
      # firewall.nix.
      {
        assertion = fw.filterForward -> config.networking.nftables.enable;
        message = "filterForward only works with the nftables based firewall";
      }
      # nat.nix.
      {
        assertion = nat.enable -> (nat.forwardPorts != [ ] -> nat.externalInterface != null);
        message = "networking.nat.forwardPorts requires networking.nat.externalInterface";
      }
      # resolved.nix.
      {
        assertion = config.services.resolved.enable -> !config.networking.useHostResolvConf;
        message = "Using host resolv.conf is not supported with systemd-resolved";
      }
    ];
    # nixos/modules/virtualisation/container-config.nix.
    networking.useHostResolvConf = lib.mkIf config.boot.isContainer (lib.mkDefault true);
  };
}
