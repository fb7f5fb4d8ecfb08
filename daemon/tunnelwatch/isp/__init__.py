"""isp: the ISP side (reference collector and its store); a box does not need it.

See docs/architecture.md for the wings and the data flow.
"""
