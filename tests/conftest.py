"""Fixtures live in tests/fix_servers.py (loaded with -p tests.fix_servers)."""
