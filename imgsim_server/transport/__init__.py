"""Transports over the core: gRPC (asyncio server) now; the stream protocol they share."""
