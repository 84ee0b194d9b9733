"""The relay, stage by stage: source, decode, route, contracts, sink, checkpoint, write-back, dead
letters, backfill, the session.
"""
