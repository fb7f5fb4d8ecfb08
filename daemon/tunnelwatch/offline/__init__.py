"""offline: captures (`tunnelwatch classify`, `--inline`), the pcap reader and `make eval`.

See docs/architecture.md for the wings and the data flow.
"""
