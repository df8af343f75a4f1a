"""tokenproxy: a reverse proxy that replaces customer names and phone numbers with tokens."""

__version__ = "0.1.0"
