# The `registry` capability: the live view of every announced agent (up, stale, gone), its
# history as `agent.*` events, and capability queries (`cim.registry.*`). Every agent
# announces itself whether or not this is enabled (`cim agents ls` then reads the bucket);
# the registry adds the states over time and the events.
# Its own keys (`stale_after`, `gone_after`, `sweep_interval`, `keep_gone`) are plain
# `settings`, checked at build time by `cim config check` like every other key.
import ./capability.nix { name = "registry"; }
