"""From a file to the spectrograms each model needs: content hash, cache lookup, decode, log-mel.

The content hash covers the size and the opening and closing bytes rather than the whole file: tags
depend only on the opening seconds, and hashing every byte of a 2-hour take would cost more I/O than
tagging it. The head is 4 MiB because it should hold every byte the decoder reads: 3 s of 96 kHz 24-bit
stereo is 1.7 MB, of 192 kHz 24-bit stereo 3.5 MB; a smaller head would let an edit inside the opening
seconds of such a file keep its old hash, and with it the old tags and cached spectrogram. It costs
little: a sample is usually far smaller than the head, so the hash reads the file once, whole, and the
decoder then finds it in the page cache. A head that holds only silence (a stem that starts after 20 s:
the decoder reads on to its first sound, up to a minute in) says nothing of the file: the bytes from its
first sound are hashed too. Containers may put megabytes of metadata (cover art, an ID3 chunk) before the
audio; when they put more than BURIED_BYTES (~680 KB), the head alone would hash mostly metadata,
and two packs' files with the same artwork got one content id (and one's tags): the audio's own opening
bytes are hashed too.

The digest is SHA-256 cut to 16 bytes: CPUs compute SHA-256 in hardware (SHA-NI, ARMv8 crypto), twice as
fast as the blake2b used before (~0.1 ms for a 200 kB sample), and 128 bits of it identify content as
robustly (a collision takes ~2^64 work, and nobody gains by forging one here). A file hashed by an older
daemon keeps its id until it is read again.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterable
from io import FileIO
from typing import NamedTuple

import numpy as np
import soundfile as sf

from .cache import SpectrogramCache
from .decode import (
    LOOK_AHEAD_S,
    VANISHED,
    DecodeError,
    FileVanished,
    TryLater,
    changed_at,
    check_readable,
    decode,
    unreadable,
)
from .spectrogram import SpectrogramParams, as_fed

HEAD_BYTES = 4 << 20
TAIL_BYTES = 64 << 10


class Fingerprint(NamedTuple):
    size: int
    mtime_ns: int  # changed_at(): the file's mtime or, when later, its ctime
    inode: int
    hash: bytes
    links: int = 1  # hard links to it: a change written through one is heard as a change of that one only


def fingerprint(path: str) -> Fingerprint:
    """What the index keeps to know a file again; DecodeError when the file cannot be read."""
    seen = check_readable(path)
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            digest = hashlib.sha256(st.st_size.to_bytes(8, "little"))
            head = _read_head(f, min(st.st_size, HEAD_BYTES))
            digest.update(head)
            if st.st_size > HEAD_BYTES:
                start = audio_start(f, bytes(head[:12]))
                opening, read_to = head[start:], HEAD_BYTES
                if start > BURIED_BYTES:
                    f.seek(start)
                    opening = _read_head(f, HEAD_BYTES)  # (the head is hashed: its buffer is free)
                    digest.update(opening)
                    read_to = start + len(opening)
                frame = _repeated_frame(opening)
                if frame:  # (the pattern as it goes on at read_to)
                    digest.update(_first_sound(f, read_to, bytes(opening[-frame:]), _look_ahead_end(path, start)))
                f.seek(max(HEAD_BYTES, st.st_size - TAIL_BYTES))
                digest.update(f.read(TAIL_BYTES))
    except FileNotFoundError:
        raise FileVanished(VANISHED) from None
    except OSError as e:  # changed between the check and the read, or a bad sector, a share that went away
        raise unreadable("read", e, seen) from None
    return Fingerprint(st.st_size, changed_at(st), st.st_ino, digest.digest()[:16], st.st_nlink)


OPENING_BYTES = 3_500_000  # the most the decoder reads of the audio itself: 3 s of 192 kHz 24-bit stereo
BURIED_BYTES = HEAD_BYTES - OPENING_BYTES  # metadata beyond which the head no longer holds the opening seconds


def audio_start(f: FileIO, magic: bytes) -> int:
    """Where the audio begins in the containers that put metadata first (RIFF/RF64, AIFF, ID3v2 before
    MP3, FLAC); 0 when unknown. Walks the chunk headers, a few bytes each, without reading the chunks."""
    if magic[:4] in (b"RIFF", b"RF64", b"BW64"):
        return _chunk(f, b"data", "<", 0)
    if magic[:4] == b"FORM":
        return _chunk(f, b"SSND", ">", 8)  # (SSND's offset and block size come before its samples)
    if magic[:3] == b"ID3" and len(magic) >= 10:
        size = (magic[6] & 0x7F) << 21 | (magic[7] & 0x7F) << 14 | (magic[8] & 0x7F) << 7 | (magic[9] & 0x7F)
        return 10 + size + (10 if magic[5] & 0x10 else 0)  # (a footer, when the flags say so)
    if magic[:4] == b"fLaC":
        pos = 4
        for _ in range(1024):  # metadata blocks: a last-block flag, a type and a 24-bit length each
            f.seek(pos)
            header = f.read(4)
            if len(header) < 4:
                return 0
            pos += 4 + int.from_bytes(header[1:4], "big")
            if header[0] & 0x80:
                return pos
    return 0


def _chunk(f: FileIO, wanted: bytes, order: str, skip: int) -> int:
    pos = 12
    for _ in range(1024):  # a file of a thousand chunks is not a sample pack's
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return 0
        name, size = header[:4], struct.unpack(f"{order}I", header[4:])[0]
        if name == wanted:
            return pos + 8 + skip
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return 0


FRAMES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # the bytes of a frame: 1 to 4 bytes a sample, 1 to 8 channels
SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def _repeated_frame(opening: memoryview) -> int:
    """The length of the frame that the audio in the head repeats throughout, 0 when it does not: digital
    silence (0, 0x80 in 8-bit), a DC offset of a few LSB, one channel at 0 and the other at -1. Such a head
    says nothing of the file (the decoder reads on to the first sound); a few kB tell most heads apart."""
    a = np.frombuffer(opening, np.uint8)
    if a.size < 64:
        return 0
    probe = a[: 1 << 16]
    return next((n for n in FRAMES if (probe[n:] == probe[:-n]).all() and (a[n:] == a[:-n]).all()), 0)


def _look_ahead_end(path: str, audio_at: int) -> int:
    """Where the decoder stops looking for a first sound, in bytes: LOOK_AHEAD_S of this file's frames (and
    the clip after it) from where its audio begins; a generous bound when its header cannot tell."""
    try:
        info = sf.info(path)
        per_s = info.samplerate * info.channels * SAMPLE_BYTES.get(info.subtype, 8)
    except Exception:  # (libsndfile refuses it: the decoder will say why)
        return audio_at + (256 << 20)
    return audio_at + int(per_s * (LOOK_AHEAD_S + 4))


def _first_sound(f: FileIO, pos: int, pattern: bytes, end: int) -> bytes:
    """Where the head's repeated frame first breaks past `pos` (up to `end`), and the opening from there. A
    stem that starts after 20 s has a head of silence, and the decoder reads on to its first sound: the stems
    of one song, of one length, were known by their silent heads alone, one content id and one stem's tags."""
    step = len(pattern) << 18  # a whole number of frames: each block starts where the pattern does
    expected = np.frombuffer(pattern * (1 << 18), np.uint8)
    f.seek(pos)
    while pos < end:
        block = f.read(min(step, end - pos))
        if not block:
            break
        loud = np.flatnonzero(np.frombuffer(block, np.uint8) != expected[: len(block)])
        if loud.size:
            pos += int(loud[0])
            f.seek(pos)
            return pos.to_bytes(8, "little") + f.read(OPENING_BYTES)
        pos += len(block)
    return pos.to_bytes(8, "little")


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


class FileChanged(TryLater):
    """The file changed between its hash and its decoding: what was decoded is not what was hashed. Read
    again a little later (not failed until it changes again: a chmod or a rename meanwhile is no new sound)."""


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
        spec = as_fed(audio_by_key[key], params)
        found[params] = spec
        fresh.append((content_hash, params, spec))
    if fresh:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileVanished("file not found (deleted or moved while it was read)") from None
        except OSError:
            raise FileChanged(CHANGED) from None
        # rewritten meanwhile: its size, its inode or a newer mtime tell, or a newer ctime (`rsync --inplace -t`,
        # `cp -p` and tag editors set the old mtime back over new bytes); not the ctime of a hard link made or
        # removed (a `cp -al` backup, a deduplicator): its count of links tells that one
        rewritten = changed_at(st) > hashed.mtime_ns and st.st_nlink == hashed.links
        if (st.st_size, st.st_ino) != (hashed.size, hashed.inode) or st.st_mtime_ns > hashed.mtime_ns or rewritten:
            raise FileChanged(CHANGED)
    return found, fresh


def read(
    path: str, wanted: Callable[[Fingerprint], Iterable[SpectrogramParams]], cache: SpectrogramCache | None
) -> tuple[Fingerprint, dict[SpectrogramParams, np.ndarray], list[tuple[bytes, SpectrogramParams, np.ndarray]]]:
    """A file's fingerprint and `features` for the parameter sets `wanted(fingerprint)` names, read again at once
    when it changed as it was read (a chmod, a save): `vibrary tag` and a dataset's build failed such a file,
    where the daemon reads it again a minute later (FileChanged is a TryLater) when it changes both times."""
    for again in (False, True):
        hashed = fingerprint(path)
        try:
            return (hashed, *features(path, hashed, wanted(hashed), cache))
        except FileChanged:
            if again:
                raise
    raise AssertionError("unreachable")


__all__ = ["DecodeError", "FileChanged", "features", "fingerprint", "read"]
