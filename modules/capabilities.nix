# The ONE list of CIM capabilities, read from the file the Python package ships
# (agents/cim/capabilities.json), so the option set, the NATS permissions, the flake's
# per-capability modules and the checks can never disagree with the agents.
# This is plain data, not a NixOS module.
let
  data = builtins.fromJSON (builtins.readFile ../agents/cim/capabilities.json);
in
rec {
  # Sorted (builtins.attrNames sorts), so every derived value is stable.
  names = builtins.attrNames data.capabilities;

  description = name: data.capabilities.${name}.description;

  # The NATS permissions of one agent's user: the common ones every agent needs plus the
  # subjects and JetStream API calls its capability declares. Nothing else is allowed.
  # `{capability}` in the common lists stands for the agent's own capability.
  permissions =
    name:
    let
      common = map (builtins.replaceStrings [ "{capability}" ] [ name ]);
    in
    {
      publish = common data.common.publish ++ data.capabilities.${name}.publish;
      subscribe = common data.common.subscribe ++ data.capabilities.${name}.subscribe;
    };

  # Position in `names`, used to give each container its own /30-like address pair.
  indexOf =
    name:
    let
      go = i: if i >= builtins.length names then throw "unknown CIM capability ${name}"
        else if builtins.elemAt names i == name then i else go (i + 1);
    in
    go 0;
}
