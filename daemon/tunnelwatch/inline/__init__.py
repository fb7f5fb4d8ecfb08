"""inline: the kernel interfaces and the per-packet path (NFQUEUE, rules, enforcer, supervisor, workers).

See docs/architecture.md for the wings and the data flow.
"""
