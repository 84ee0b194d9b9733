"""PostgreSQL: connections, LSNs, the slot, server settings, privileges and the migrations (sql/
shipped as package data).
"""
