# The `pipeline` capability: declarative pipelines of plugin steps, the search index and
# the relation graph. Pipelines are Nix attrsets under `services.cim.pipeline.pipelines`
# (merged across modules by name) and land in the agent's `settings.pipelines`; the agent
# installs them into the KV bucket CIM_PIPELINES at start, next to those applied with
# `cim pipelines apply`. `cim config check` validates them at build time.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.cim.pipeline;
  fmt = pkgs.formats.json { };
in
{
  imports = [ (import ./capability.nix { name = "pipeline"; }) ];

  options.services.cim.pipeline.pipelines = lib.mkOption {
    type = lib.types.attrsOf (lib.types.submodule {
      freeformType = fmt.type;
      options.steps = lib.mkOption {
        type = lib.types.listOf fmt.type;
        description = "The steps, in order: `{ name = \"extract\"; plugin = \"extract\"; settings = { }; }`.";
      };
    });
    default = { };
    example = lib.literalExpression ''
      {
        default = {
          description = "classify, extract, index every new unit";
          steps = map (s: { name = s; plugin = s; }) [ "classify" "extract" "index" "relate" "summarize" ];
        };
        contracts = {
          context.labels = [ "contract" ];
          steps = [
            { name = "retention"; plugin = "retention"; settings.rules = [ { label = "retention:10y"; } ]; }
          ];
        };
      }
    '';
    description = ''
      Pipelines by name: a trigger (default: every new unit), a context (labels or sources
      a unit must have), and the plugin steps with their settings. Left empty, the agent
      installs its default pipeline (classify, extract, index, relate, summarize).
    '';
  };

  # Declared pipelines replace the agent's default list; the name comes from the attribute.
  config.services.cim.pipeline.settings.pipelines = lib.mkIf (cfg.pipelines != { }) (
    lib.mapAttrsToList (name: p: { inherit name; } // p) cfg.pipelines
  );
}
