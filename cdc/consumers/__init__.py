"""Consumer groups: the worker (plain and ordered), leases, fenced steps, the example consumers."""
