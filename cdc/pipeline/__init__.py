"""The relay, stage by stage: source, decode, route, contracts, publisher, sink, checkpoint,
marks and write-back, dead letters, backfill; stages.py their Protocols, session.py builds
them, loop.py runs them, relay.py runs sessions one after another.
"""
