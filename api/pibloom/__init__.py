"""piBLOOM: a self-hosted chat service for small language models."""

__version__ = "0.2.0"
