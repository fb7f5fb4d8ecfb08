"""lab: the network-namespace lab behind `make demo` and the integration tests.

See docs/architecture.md for the wings and the data flow.
"""
