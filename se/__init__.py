"""se: an asyncio HTTP/WebDAV storage element over a POSIX filesystem."""

__version__ = "0.1.0"
