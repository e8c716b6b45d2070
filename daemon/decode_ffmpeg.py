"""Audio that libsndfile does not read, through FFmpeg (PyAV): AAC and ALAC, in `.m4a` and `.aac` files and in
the `.caf` files of Apple Loops. Libraries of Mac producers hold many; they were left out of the index without
a word (`.m4a`) or failed with "unsupported encoding" (`.caf`).

`FFmpegFile` offers what `decode` asks of a `soundfile.SoundFile` (samplerate, frames, read), so both kinds of
file take one path through the decoder and its checks. PyAV is imported when such a file is first met.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import numpy as np

# Containers that only FFmpeg reads here (a `.caf` goes to it when libsndfile refuses the codec inside), and the
# format to read each as: FFmpeg, given a file object and no name, guesses from the first bytes alone, and took
# some short .aac one-shots (0.1 s at 8 kHz) for no audio at all
FORMATS = {".m4a": None, ".aac": "aac"}
EXTENSIONS = frozenset(FORMATS)
# Containers whose index gives the stream's length exactly, as FFmpeg decodes it: a bare AAC stream's is guessed
# from its bit rate, and a .caf's last ALAC packet decodes short of it (0.05 s: 314 of its 2,205 frames)
INDEXED = frozenset({"mov", "mp4"})
# frames that may be missing: 1 %, as for a WAV, or two AAC frames (an encoder's padding) when that is a tenth
SLACK_FRAMES, SLACK_SHARE = 2048, 0.01


class FFmpegError(Exception):
    """FFmpeg could not read the file; str() is the reason in a producer's words."""


class FFmpegFile:
    """The first audio stream of a file, decoded to float32 frames at its own rate, a block at a time."""

    def __init__(self, path: str) -> None:
        import av  # ~0.1 s, paid by the first such file only

        self._av = av
        # by a file object: any name the OS takes, non-UTF-8 too; closed by close()
        self._raw = open(os.fsencode(path), "rb")  # noqa: SIM115
        try:
            self._open(av, self._format(FORMATS.get(os.path.splitext(path)[1].lower())))
        except av.FFmpegError as e:
            self.close()
            raise FFmpegError(_described(e)) from None
        except BaseException:
            self.close()
            raise
        self._held = np.zeros((0, 0), np.float32)  # decoded beyond what was read, (frames, channels)
        self._channels = 0
        self._seen = 0  # frames decoded so far

    def _format(self, named: str | None) -> str | None:
        """The format its name says, unless its first bytes are not that format's: a bare AAC stream starts with
        a frame's sync word (or an ID3 tag); another file named .aac (a WAV) failed as "not audio" though
        FFmpeg reads it when left to find out what it is."""
        head = self._raw.read(3)
        self._raw.seek(0)
        if named == "aac" and not ((head[:1] == b"\xff" and head[1:2] >= b"\xf0") or head == b"ID3"):
            return None
        return named

    def _open(self, av: Any, format: str | None) -> None:
        self._container = av.open(self._raw, "r", format=format, metadata_errors="ignore")
        streams = self._container.streams.audio
        if not streams:  # (an index cut short names no stream either)
            raise FFmpegError("no audio in file (a video without sound, cover art only, or a file cut short?)")
        stream = streams[0]
        if stream.codec_context is None:
            raise FFmpegError("unsupported audio codec (FFmpeg has no decoder for it)")
        self.samplerate = int(stream.rate or 0)
        if not self.samplerate:  # an .aac stream cut before its first frame header: nothing says
            raise FFmpegError(_NOT_AUDIO)
        # what the container's index declares; 0 when it has none
        indexed = INDEXED & set(self._container.format.name.split(","))
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        self.frames = int(seconds * self.samplerate) if indexed else 0
        self._decoded = self._container.decode(stream)
        self._to_float = av.AudioResampler(format="fltp")  # any sample format to float, at the file's rate

    def read(self, frames: int) -> np.ndarray:
        """(up to `frames`, channels) float32 in [-1, 1]; fewer at the end of the stream."""
        blocks, have = [self._held], self._held.shape[0]
        while have < frames:
            block = self._next_block()
            if block is None:
                self._check_whole()
                break
            if self._channels and block.shape[1] != self._channels:
                raise FFmpegError("corrupt audio: its channel count changes partway through")
            self._channels = block.shape[1]
            blocks.append(block)
            have += block.shape[0]
        audio = np.concatenate([b for b in blocks if b.size]) if have else np.zeros((0, 1), np.float32)
        self._held = audio[frames:]
        return audio[:frames]

    def _check_whole(self) -> None:
        """A stream that ends well before the length its index declares (an .m4a cut short after a whole
        packet) is refused, as a truncated WAV is. Only what is read is judged: one cut after its opening
        seconds is read as whole (a WAV's header tells its cut at no cost; an .m4a's would take its index)."""
        if self.frames - self._seen > max(SLACK_SHARE * self.frames, min(SLACK_FRAMES, self.frames // 10)):
            said = f"{self._seen:,} of the {self.frames:,} frames it declares"
            raise FFmpegError(f"truncated or corrupt: its audio ends after {said}")

    def _next_block(self) -> np.ndarray | None:
        """The next decoded frames, (n, channels); None at the end of the stream."""
        converted: list[Any] = []
        while not converted:
            try:
                frame = next(self._decoded, None)
                converted = self._to_float.resample(frame)  # None flushes what the converter holds
            except self._av.FFmpegError as e:
                if self._seen and isinstance(e, ValueError | EOFError):  # its audio stops where the bytes do
                    cut = f"truncated or corrupt: its audio breaks off after {self._seen:,} frames"
                    raise FFmpegError(cut) from None
                raise FFmpegError(_described(e)) from None
            if frame is None and not converted:
                return None
        block = np.concatenate([c.to_ndarray() for c in converted], axis=1).T
        self._seen += block.shape[0]
        return block

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
        self._raw.close()

    def __enter__(self) -> FFmpegFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


_NOT_AUDIO = "not a recognised audio format (damaged, cut short, or not audio at all)"


def _described(e: Exception) -> str:
    """FFmpeg's errno words ("Operation not permitted", "End of file") read as a permissions fault or as
    nothing: said as what they mean of a file just found readable."""
    if isinstance(e, ValueError):  # "Invalid data found when processing input", and its kin
        return _NOT_AUDIO
    if isinstance(e, EOFError):
        return "truncated or corrupt: the file ends before its audio does"
    return f"unsupported or damaged audio (FFmpeg: {getattr(e, 'strerror', None) or e})"
