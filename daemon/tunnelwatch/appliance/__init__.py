"""appliance: see docs/architecture.md."""
