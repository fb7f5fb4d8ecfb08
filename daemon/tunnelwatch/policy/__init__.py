"""policy: what to do with a classified flow (rules, bulk VoIP), the registry and its signed sync.

See docs/architecture.md for the wings and the data flow.
"""
