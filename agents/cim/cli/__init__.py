"""The `cim` command: one root app (main.py), one module per command group."""
