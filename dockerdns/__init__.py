"""dockerdns: a service-discovery DNS server for Docker."""

__version__ = "0.1.0"
