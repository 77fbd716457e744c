"""The benchmark of issue 3: the real orchestrator against the netlab (see bench/README.md)."""
