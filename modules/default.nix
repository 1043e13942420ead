# All of services.cim. Only imports: each concern lives in its own file, and every
# capability listed in agents/cim/capabilities.json has its module.
let
  capabilities = import ./capabilities.nix;
in
{
  imports = [
    ./options.nix
    ./nats.nix
    ./provision.nix
    ./keys.nix
    ./network.nix
    ./assertions.nix
    ./monitoring.nix
  ] ++ map (name: ./. + "/${name}.nix") capabilities.names;
}
