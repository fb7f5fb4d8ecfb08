"""appliance: the box as a product (status state, page and API, mDNS, systemd, privileges).

See docs/architecture.md for the wings and the data flow.
"""
