# All of services.cim. Only imports: each concern lives in its own file.
let
  capabilities = import ./capabilities.nix;
  # A capability's module is written in the issue that builds its agent; until then its
  # file does not exist and the capability has no options.
  capabilityModules = builtins.filter builtins.pathExists (
    map (name: ./. + "/${name}.nix") capabilities.names
  );
in
{
  imports = [
    ./options.nix
    ./nats.nix
    ./provision.nix
    ./assertions.nix
  ] ++ capabilityModules;
}
