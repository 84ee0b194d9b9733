"""The Axiom side: the outbox producer API, SQLAlchemy adapter, case stats, query jobs, the
ontology cache, the stores.
"""
