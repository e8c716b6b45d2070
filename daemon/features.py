"""From a file to the spectrograms each model needs: content hash, cache lookup, decode, log-mel.

The content hash covers the size and the opening and closing bytes rather than the whole file: tags
depend only on the opening seconds, and hashing every byte of a 2-hour take would cost more I/O than
tagging it. The head is 4 MiB because it should hold every byte the decoder reads: 3 s of 96 kHz 24-bit
stereo is 1.7 MB, of 192 kHz 24-bit stereo 3.5 MB; a smaller head would let an edit inside the opening
seconds of such a file keep its old hash, and with it the old tags and cached spectrogram. It costs
little: a sample is usually far smaller than the head, so the hash reads the file once, whole, and the
decoder then finds it in the page cache.

The digest is SHA-256 cut to 16 bytes: CPUs compute SHA-256 in hardware (SHA-NI, ARMv8 crypto), twice as
fast as the blake2b used before (~0.1 ms for a 200 kB sample), and 128 bits of it identify content as
robustly (a collision takes ~2^64 work, and nobody gains by forging one here). A file hashed by an older
daemon keeps its id until it is read again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from io import FileIO
from typing import NamedTuple

import numpy as np

from .cache import SpectrogramCache
from .decode import DecodeError, FileVanished, check_readable, decode
from .spectrogram import SpectrogramParams, dequantize, log_mel, quantize

HEAD_BYTES = 4 << 20
TAIL_BYTES = 64 << 10


class Fingerprint(NamedTuple):
    size: int
    mtime_ns: int
    inode: int
    hash: bytes


def fingerprint(path: str) -> Fingerprint:
    """What the index keeps to know a file again; DecodeError when the file cannot be read."""
    check_readable(path)
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            digest = hashlib.sha256(st.st_size.to_bytes(8, "little"))
            digest.update(_read_head(f, min(st.st_size, HEAD_BYTES)))
            if st.st_size > HEAD_BYTES:
                f.seek(max(HEAD_BYTES, st.st_size - TAIL_BYTES))
                digest.update(f.read(TAIL_BYTES))
    except FileNotFoundError:
        raise FileVanished("file not found (deleted or moved before it could be read)") from None
    except OSError as e:  # changed between the check and the read
        raise DecodeError(f"cannot read file: {e.strerror}") from None
    return Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino, digest.digest()[:16])


_buffers = threading.local()


def _read_head(f: FileIO, size: int) -> memoryview:
    """Up to `size` bytes into this thread's buffer: read() allocated and faulted in a fresh buffer for
    every file (a fifth of the hash's time); the buffer grows to the largest head read so far."""
    buf: bytearray | None = getattr(_buffers, "head", None)
    if buf is None or len(buf) < size:
        buf = _buffers.head = bytearray(size)
    view = memoryview(buf)[:size]
    got = 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:  # shorter than it was a moment ago: hash what is there
            break
        got += n
    return view[:got]


def _decode_key(p: SpectrogramParams) -> tuple[int, float, bool, str]:
    return (p.sample_rate, p.duration_s, p.mono, p.pad)


CHANGED = "the file changed while it was being read"


class FileChanged(DecodeError):
    """The file changed between its hash and its decoding: what was decoded is not what was hashed."""


def features(
    path: str, hashed: Fingerprint, wanted: Iterable[SpectrogramParams], cache: SpectrogramCache | None
) -> tuple[dict[SpectrogramParams, np.ndarray], list[tuple[bytes, SpectrogramParams, np.ndarray]]]:
    """Spectrograms for every parameter set wanted, and the freshly computed ones to cache.

    Fresh spectrograms go through the same 8-bit quantisation as cached ones, so a file gets the same
    tags whether its spectrogram came from the cache or from the audio. A file rewritten after it was
    hashed is FileChanged: its new sound would be cached, and tagged, as the old content, which every
    copy of the old content would then reuse.
    """
    content_hash = hashed.hash
    found: dict[SpectrogramParams, np.ndarray] = {}
    missing: list[SpectrogramParams] = []
    for params in dict.fromkeys(wanted):
        cached = cache.get(content_hash, params) if cache is not None else None
        if cached is None:
            missing.append(params)
        else:
            found[params] = cached
    fresh = []
    audio_by_key: dict[tuple[int, float, bool, str], np.ndarray] = {}
    for params in missing:
        key = _decode_key(params)
        if key not in audio_by_key:
            audio_by_key[key] = decode(path, params)
        spec = dequantize(quantize(log_mel(audio_by_key[key], params), params), params)
        found[params] = spec
        fresh.append((content_hash, params, spec))
    if fresh:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileVanished("file not found (deleted or moved while it was read)") from None
        except OSError:
            raise FileChanged(CHANGED) from None
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (hashed.size, hashed.mtime_ns, hashed.inode):
            raise FileChanged(CHANGED)
    return found, fresh


__all__ = ["DecodeError", "FileChanged", "features", "fingerprint"]
