"""reddit-gateway: an identity-aware reverse proxy for reddit sign-in."""

__version__ = "0.1.0"
