"""What the client library raises, apart from the modules that raise it, so that a script can catch all of
it with one `except VibraryError` (the query grammar raises too, without importing gRPC)."""

from __future__ import annotations


class VibraryError(Exception):
    """What this client library raises: catch it to catch them all."""


class BadArgument(VibraryError, ValueError):
    """An argument that cannot make sense, refused before anything is asked of the daemon."""


def json_asked(words: list[str]) -> bool:
    """Whether a command line asks for --json (or an abbreviation argparse takes: --js), read before it is parsed:
    a mistake in it, or a Ctrl-C while it loads, still ends with the JSON line a script reads."""
    return any(len(w) > 2 and "--json".startswith(w) for w in words)
