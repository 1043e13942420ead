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

  # Whether several agents may share the capability's work (`instances`; `cim agent run
  # --instances` refuses the others).
  scales = name: data.capabilities.${name}.scales or false;

  # The NATS permissions of one agent's user: the common ones every agent needs plus the
  # subjects and JetStream API calls its capability declares. Nothing else is allowed.
  # `{capability}` in the common lists stands for the agent's own capability.
  # The event types it may append become `cim.evt.<aggregate>.*.<event>` (readers take an
  # event's type from its subject, so the server decides who writes what).
  permissions =
    name:
    let
      common = map (builtins.replaceStrings [ "{capability}" ] [ name ]);
      eventSubject =
        type:
        let
          m = builtins.match "([^.]+)[.](.+)" type;
        in
        "cim.evt.${builtins.elemAt m 0}.*.${builtins.elemAt m 1}";
    in
    {
      publish = common data.common.publish ++ map eventSubject data.capabilities.${name}.events ++ data.capabilities.${name}.publish;
      subscribe = common data.common.subscribe ++ data.capabilities.${name}.subscribe;
      # Publishes refused inside those (another capability's durable consumer).
      denyPublish = data.capabilities.${name}.deny_publish or [ ];
    };

  # The `permissions` block of the agent's NATS user: allow lists, and replies through
  # allow_responses instead of a publish right on every inbox (cim.capabilities renders the same).
  natsPermissions =
    name:
    let
      p = permissions name;
    in
    {
      publish = { allow = p.publish; } // (if p.denyPublish == [ ] then { } else { deny = p.denyPublish; });
      subscribe.allow = p.subscribe;
      allow_responses = data.common.allow_responses;
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
