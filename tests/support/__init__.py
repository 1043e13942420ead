"""The test harness' helpers (the fixtures are in tests/conftest.py): agent processes, the
tier, hub, pipeline and UI kits, and the bounded waits tests poll with."""
