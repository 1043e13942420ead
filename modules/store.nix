# The `store` capability: immutable, content-addressed information units over NATS.
# Its own keys (`max_unit_size`, `list_limit`) are plain `settings`, checked at build
# time by `cim config check` like every other key.
import ./capability.nix { name = "store"; }
