"""What the client library raises, apart from the modules that raise it, so that a script can catch all of
it with one `except VibraryError` (the query grammar raises too, without importing gRPC)."""

from __future__ import annotations


class VibraryError(Exception):
    """What this client library raises: catch it to catch them all."""


class BadArgument(VibraryError, ValueError):
    """An argument that cannot make sense, refused before anything is asked of the daemon."""
