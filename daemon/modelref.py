"""How a model is named on a command line and over the API: NAME, or NAME@VERSION. Apart from the registry,
which loads onnxruntime, so that the client library can read references the way the CLI does."""

from __future__ import annotations

import unicodedata

from .config import LONGEST_NAME


def parse_ref(text: str) -> tuple[str, int]:
    """'NAME' or 'NAME@VERSION' → (name, version or 0); ValueError for anything else. The name as composed
    characters (NFC), as names are kept: `stimmung_ä` typed or pasted decomposed (macOS file names are) was
    refused as no name at all."""
    name, at, version = unicodedata.normalize("NFC", text).partition("@")
    if not name:
        raise ValueError(f"bad model reference {text!r}: expected NAME or NAME@VERSION")
    if len(name) > 10 * LONGEST_NAME or "\0" in name:  # no model is so named (a name from before the limit is
        # not refused): it was "no model" and 2,000 characters of it
        raise ValueError(f"bad model name {name[:40]!r}…: {10 * LONGEST_NAME} characters at most, and no NUL")
    # `NAME@` or `NAME@0` from an empty variable in a script must not mean the newest; `NAME@²` is no number
    if at and not (version.isascii() and version.isdigit() and int(version) > 0):
        raise ValueError(f"bad model version in {text!r}: versions count from 1")
    return name, int(version or 0)
