"""tunnelwatch: tags VPN/tunnel and VoIP flows on a customer-premises router and enforces ISP policy."""

__version__ = "0.1.0"
