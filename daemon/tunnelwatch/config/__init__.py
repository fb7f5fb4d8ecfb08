"""config: the YAML schema and loader, with file:line:col errors (also `tunnelwatch check-config`).

See docs/architecture.md for the wings and the data flow.
"""
