"""report: everything sent upward (events, spool, uplink, IPFIX, privacy, heartbeat figures).

See docs/architecture.md for the wings and the data flow.
"""
