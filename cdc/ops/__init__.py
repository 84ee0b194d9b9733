"""Operator tools behind the CLI: doctor, status, dlq, replay, prune, trim."""
