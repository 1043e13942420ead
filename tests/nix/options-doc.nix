# The services.cim options as data, for docs/options.md (tests/nix/render_options.py).
{
  lib ?
    let
      fromEnv = builtins.getEnv "CIM_NIXPKGS_LIB";
    in
    if fromEnv != "" then import fromEnv else import <nixpkgs/lib>,
}:
let
  h = import ./eval.nix { inherit lib; };
  # Nothing enabled: the defaults as a user first sees them.
  options = (h.eval [ { networking.hostName = "example"; } ]).options;
  visible = opt: opt.visible && !opt.internal;
in
map (opt: {
  inherit (opt) name description type readOnly;
  default = opt.default or null;
  example = opt.example or null;
  # Relative to the repository, wherever it is checked out or copied.
  declarations = map (d: lib.last (lib.splitString "/modules/" (toString d))) opt.declarations;
}) (builtins.filter visible (lib.optionAttrSetToDocList { services.cim = options.services.cim; }))
