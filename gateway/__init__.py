"""OAuth 2.0 bearer-token gateway."""

__version__ = "0.1.0"
