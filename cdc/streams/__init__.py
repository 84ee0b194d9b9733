"""Redis: the connection factory, the key schema, the Lua registry, the Redis-side relay state and
the entry schema.
"""
