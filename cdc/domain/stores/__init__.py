"""Durable state of the Synapse and Weaver contexts in PostgreSQL (seed P0-03).

Every store takes a `psycopg_pool.ConnectionPool` (no globals). A write either runs in its
own transaction from the pool, or, given `conn=`, inside the caller's transaction so that
the caller can add its own statements and decide to commit or roll back.
"""
