"""One module per capability's agent. Each defines `Config` (its config file) and `Agent`."""
