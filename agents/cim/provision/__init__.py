"""Provisioning: the spec (spec.py, which every capability declares its part in) and
applying it (apply.py). This file imports neither, so a capability can import the spec
while cim.capabilities, which apply.py reads, imports the capabilities."""
