"""isp: see docs/architecture.md."""
