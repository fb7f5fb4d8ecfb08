"""inline: see docs/architecture.md."""
