"""Fixtures live in plugins: tests/fix_servers.py (loaded with -p tests.fix_servers) and
tests/fix_cluster.py (a Redis Cluster per module that asks for one)."""

pytest_plugins = ["tests.fix_cluster"]
