"""Read the opening seconds of an audio file as a fixed-length clip, or say clearly why not.

Only `duration_s` worth of frames is ever read, so a 2-hour file costs what a one-shot costs and a header
that claims 10 GB allocates nothing. Every failure becomes a `DecodeError` with a one-line reason a
producer can act on; nothing else escapes, so one bad file never stops the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re

import numpy as np
import soundfile as sf
import soxr

from .decode_ffmpeg import EXTENSIONS as FFMPEG_EXTENSIONS
from .decode_ffmpeg import FFmpegError, FFmpegFile
from .spectrogram import SpectrogramParams

# What libsndfile decodes, and what FFmpeg decodes for it; anything else in a watched folder is not ours to
# report on.
AUDIO_EXTENSIONS = (
    frozenset(
        {
            ".wav",
            ".wave",
            ".bwf",
            ".aif",
            ".aiff",
            ".aifc",
            ".flac",
            ".ogg",
            ".oga",
            ".opus",
            ".mp3",
            ".caf",
            ".w64",
            ".rf64",
        }
    )
    | FFMPEG_EXTENSIONS
)
# libsndfile's refusal of a container it knows holding a codec it does not (AAC or ALAC in a .caf): FFmpeg's turn
UNSUPPORTED_ENCODING = "unsupported encoding"
# … and of an Ogg file it finds malformed: FFmpeg's turn too, its refusal said as libsndfile's
MALFORMED = "file is malformed"
OGG_EXTENSIONS = frozenset({".ogg", ".oga", ".opus"})

# libsndfile clamps a data chunk that runs past the end of the file and logs "data : 176400 (should be
# 58770)": a truncated copy, or a header claiming more audio than there is.
# libsndfile's log of a size the file does not hold: the audio's (WAV's "data", AIFF's " SSND", indented), or,
# where that is given otherwise, the whole file's (RF64's "Riff size", its data size in a ds64 chunk; W64's "riff")
_SHORT_DATA = re.compile(r"^\s*(data|SSND|Riff size|riff)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


class DecodeError(Exception):
    """A file that cannot be turned into a clip; str() is the one-line reason. `stamp` is the file's (size,
    changed_at) when it was refused after a stat (empty, a named pipe, no permission to open), so that a
    rescan knows it unchanged and does not read it again; (-1, -1) when it could not be stat'ed."""

    def __init__(self, reason: str, stamp: tuple[int, int] = (-1, -1)) -> None:
        super().__init__(reason)
        self.stamp = stamp


class FileVanished(DecodeError):
    """The file is gone (deleted or moved away since it was seen)."""


class TryLater(DecodeError):
    """A reason that passes: the system out of file handles or memory, a network drive that timed out.
    Stored as a failure, such a file waited for a change or a restart: it is read again a little later."""


VANISHED = "file not found (deleted or moved before it could be read)"
BROKEN_LINK = "broken symbolic link"  # its target not there: the watcher looks for it to come back
NO_PERMISSION = "permission denied"  # the watcher looks for it to be readable: mended, the file need not change
# errnos that say nothing about the file; EIO is left out: on a local disk it is a bad sector, for good
PASSING = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}
    # a share that went away (sshfs, SMB, NFS): failed for good (a rescan knows the file unchanged), it stayed so
    | {errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNRESET}
    | {errno.ECONNABORTED}
)


def unreadable(doing: str, e: OSError, stamp: tuple[int, int] = (-1, -1)) -> DecodeError:
    """The error for an OSError met while `doing` (open, stat, read) a file, as it was seen (DecodeError.stamp)."""
    return (TryLater if e.errno in PASSING else DecodeError)(f"cannot {doing} file: {e.strerror}", stamp)


# What macOS leaves in the zips sample packs come in: `._Kick.wav` beside each `Kick.wav` (its Finder
# metadata, no audio) and a `__MACOSX/` folder of them. Read as audio, each was a failure that crowded the
# real ones out of `vibrary status`, and a bogus example in a dataset. And what systems keep in a drive's
# folders: the trash of each file manager (Linux's `.Trash-1000/`, macOS's `.Trashes/`, Windows' `$RECYCLE.BIN/`,
# a NAS's `#recycle/`: a sample deleted from a watched drive came back in every search), their indexers'
# stores, and a NAS's: the metadata of its media indexer and of Mac clients (`@eaDir/`, `.AppleDouble/`, whose
# `kick.wav` is no audio) and its snapshots (`#snapshot/`, `.snapshot/`: the whole library again, once per
# snapshot). None of it is the library. (Lower-case: FAT and NTFS drives spell them as they please.)
JUNK_PREFIX = "._"
JUNK_FOLDERS = frozenset(
    {"__macosx", ".trash", ".trashes", "$recycle.bin", "#recycle", "@recycle", ".recycle"}
    | {".spotlight-v100", ".fseventsd", ".temporaryitems", ".documentrevisions-v100"}
    | {"@eadir", ".appledouble", ".@__thumb", "#snapshot", ".snapshot", ".snapshots"}
    | {"lost+found"}  # a drive's own, root's alone: "cannot be listed" of every drive's
)
HOME_TRASH = os.path.join(os.sep, ".local", "share", "Trash", "")  # a watched home folder's own trash
IN_JUNK = "in a trash or system folder: never indexed"  # (a NAS's snapshots and metadata among them)
NOT_AUDIO = "not an audio file that Vibrary reads"  # by its name: a PDF, a DAW project
# macOS writes one beside each file it copies to a drive that cannot hold its metadata: "not an audio file" of
# `._Kick.wav` read as "Vibrary cannot read my WAVs"
MAC_METADATA = "macOS's metadata beside a file (`._NAME`), not audio: never indexed"


def is_junk_folder(name: str) -> bool:
    name = name.lower()
    return name in JUNK_FOLDERS or name.startswith(".trash-")


def in_junk_folder(path: str) -> bool:
    """Whether a path is, or lies in, one of the JUNK_FOLDERS (or a home folder's trash)."""
    return any(is_junk_folder(part) for part in path.split(os.sep)) or HOME_TRASH in path + os.sep


def why_not_read(path: str) -> str:
    """Why a file asked for by name is none that Vibrary reads ("": it is one): the same words whichever
    call asked (a trashed `.m4a` was "not an audio file that Vibrary reads" to one, "in a trash" to another)."""
    if in_junk_folder(os.path.dirname(path)):
        return IN_JUNK
    if os.path.basename(path).startswith(JUNK_PREFIX):
        return MAC_METADATA
    return "" if is_audio_path(path) else NOT_AUDIO


def is_audio_path(path: str) -> bool:
    name = os.path.basename(path)
    if name.startswith(JUNK_PREFIX) or in_junk_folder(os.path.dirname(path)):
        return False
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


RATES = (1_000, 768_000)  # the sample rates a real file has, in Hz: 768 kHz is DXD's double, 8 kHz telephony
LOUDEST = 1e6  # float samples beyond this (full scale is 1) are clipped to it: its power spectrum stays finite
WILD_MOST, WILD_FEW = 0.001, 64  # ... and beyond this share of such samples (or NaN, inf), and this many, a
# file is corrupt, not loud (one NaN in a one-shot of 200 samples is a glitch)
INAUDIBLE = 10 ** (-70 / 20)  # opening seconds that peak below -70 dBFS are silence (16-bit dither: -90)
CLEARLY_LOUD = 10 ** (-40 / 20)  # a peak above which an offset needs no looking at: none that large carries nothing
# How far into a file whose opening seconds are silent the first sound is looked for (a stem that starts at
# bar 17, a kick after 5 s of silence): those files had no tags, and never turned up in a search.
LOOK_AHEAD_S = 60.0


def decode(path: str, params: SpectrogramParams) -> np.ndarray:
    """(channels, n_samples) float32 at params.sample_rate: duration_s from the first sound, padded to length;
    the first sound is looked for up to LOOK_AHEAD_S in. A sample bounced with its pre-roll (2.9 s of silence
    before the note) was the silence and the note's first tenth of a second to the model: piano 0.98 became
    snare 0.21, as 4 in 14 of such clips stayed right against 12 of their trimmed twins."""
    check_readable(path)
    try:
        with contextlib.ExitStack() as opened:
            f = _open(path, opened)
            if isinstance(f, sf.SoundFile):
                _check_header(f)
            native_sr = f.samplerate
            if not RATES[0] <= native_sr <= RATES[1]:  # a damaged header: its "3 s" could be the whole file,
                # 2 GB of samples for a 48 MB file, or 24 GiB asked of the allocator for one of 65 kB
                raise DecodeError(f"implausible sample rate in its header: {native_sr:,} Hz (damaged?)")
            frames = math.ceil(params.duration_s * native_sr)
            audio = _read(f, frames)
            peak = _peak(audio) if audio.size else 0.0
            if audio.shape[0] == frames and _loudness(audio, peak) < INAUDIBLE:
                audio = _from_first_sound(f, frames, audio)
                peak = _peak(audio)
            elif audio.size and (trimmed := _past_silence(f, frames, audio)) is not audio:
                audio, peak = trimmed, _peak(trimmed)
    except sf.LibsndfileError as e:
        check_readable(path)  # gone or locked since the first check: say that, not libsndfile's guess
        # its "System error" is the OS refusing an open or a read of a file just found readable: passing
        raise (TryLater if "System error" in e.error_string else DecodeError)(_describe_libsndfile_error(e)) from None
    except FFmpegError as e:
        check_readable(path)
        raise DecodeError(str(e)) from None
    except OSError as e:  # FFmpeg's reads of the file: a share gone away, a failing drive
        check_readable(path)
        raise unreadable("read", e) from None
    except (RuntimeError, TypeError, ValueError) as e:  # soundfile wraps some codec errors this way
        raise DecodeError(f"cannot decode audio: {e}") from None
    if audio.shape[0] == 0:
        raise DecodeError("no audio frames in file")
    if peak > LOUDEST:
        # NaN, inf, or float samples so large that the mix or the power spectrum overflows float32 (a
        # corrupt or mislabelled float file): that spectrogram was NaN, then quantized to 0 dB everywhere.
        # A few are no sound (silence, not a full-scale click that a kit piece is made of); many, no audio:
        # all of them said "silent", every other one tagged bass, integers read as floats woodwind
        with np.errstate(invalid="ignore"):
            wild = int(np.count_nonzero(~(np.abs(audio) <= LOUDEST)))
        if wild > max(WILD_MOST * audio.size, min(WILD_FEW, audio.size // 2)):
            raise DecodeError(
                f"corrupt audio: {wild:,} of its {audio.size:,} samples are not numbers or far beyond full scale"
                " (a damaged float file, or integers labelled as floats)"
            )
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(audio, -LOUDEST, LOUDEST, out=audio)
        peak = _peak(audio)
    if _loudness(audio, peak) < INAUDIBLE:
        # a stem that starts late, its opening seconds only dither or a noise floor: spectrograms are
        # scaled to their own peak, so that floor looked like a hi-hat (0.74) to the model
        return np.zeros((params.channels, params.n_samples), np.float32)
    return fit(audio, native_sr, params, peak)


LIBSNDFILE_NAME_MAX = 1000  # bytes of a file name libsndfile opens itself ("Supplied filename too long": 1024)


def _open(path: str, opened: contextlib.ExitStack) -> sf.SoundFile | FFmpegFile:
    """libsndfile's reader for what it reads, FFmpeg's for the rest, closed with `opened`. libsndfile opens
    the file by its name, given as bytes (a name that is not UTF-8 opens too); a longer name than it takes (a
    deep folder of long pack names: the system allows 4096) through a file object."""
    if os.path.splitext(path)[1].lower() in FFMPEG_EXTENSIONS:
        return opened.enter_context(FFmpegFile(path))
    name = os.fsencode(path)
    try:
        if len(name) < LIBSNDFILE_NAME_MAX:
            return opened.enter_context(sf.SoundFile(name))
        return opened.enter_context(sf.SoundFile(opened.enter_context(open(name, "rb"))))
    except sf.LibsndfileError as e:
        if UNSUPPORTED_ENCODING in e.error_string:
            return opened.enter_context(FFmpegFile(path))
        if MALFORMED not in e.error_string or os.path.splitext(path)[1].lower() not in OGG_EXTENSIONS:
            raise
        try:  # an Opus file whose last page ends the stream inside a packet, as FFmpeg writes it (libsndfile #888)
            return opened.enter_context(FFmpegFile(path))
        except FFmpegError:
            raise e from None


def _peak(audio: np.ndarray) -> float:
    """The largest magnitude of some (not no) audio; inf when any sample is not a number."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the NaN this looks for, no warning
        finite = np.isfinite(audio.sum())
    return float(max(audio.max(), -audio.min())) if finite else math.inf


def _loudness(audio: np.ndarray, peak: float) -> float:
    """How far some audio moves about each channel's mean: a constant offset (the DC bias of an old converter,
    of some packs' one-shots) is no sound, and +0.001 of it under a faint hiss read as a kick (0.88), in a
    one-shot as in a longer file (a loud constant, a rectangular click of 10 samples, is sound: CLEARLY_LOUD).
    `peak`: its _peak (inf when a sample is not a number). Measured only below CLEARLY_LOUD (the rest would cost
    a tenth of the decode), a channel at a time: strided, with no copy (a first version made decoding 4x slower)."""
    if peak >= CLEARLY_LOUD or not audio.size:
        return peak
    swing = 0.0
    for channel in audio.T:
        centre = float(channel.mean(dtype=np.float64))
        if not math.isfinite(centre):
            return math.inf
        swing = max(swing, float(channel.max()) - centre, centre - float(channel.min()))
    return swing


def _from_first_sound(f: sf.SoundFile | FFmpegFile, frames: int, silent: np.ndarray) -> np.ndarray:
    """`frames` frames from the first audible sample within LOOK_AHEAD_S of the start, read a block at a
    time (memory stays that of a clip); `silent`, the opening, when there is none. Audible: away from the
    opening's offset (_loudness)."""
    offset = np.nan_to_num(silent.mean(axis=0, dtype=np.float64)).astype(np.float32)
    seen, limit = silent.shape[0], int(LOOK_AHEAD_S * f.samplerate)
    while seen < limit:
        block = _read(f, min(frames, limit - seen))
        if block.shape[0] == 0:
            break
        seen += block.shape[0]
        at = _first_audible(block, offset)
        if at >= 0:
            start = block[at:]
            return np.concatenate([start, _read(f, frames - start.shape[0])]) if len(start) < frames else start
    return silent


FIRST_LOOK = 4096  # frames looked at first for a sound: most one-shots start within them, and 3 s cost more
SHORTEST_SKIP_S = 0.01  # a silence before the first sound shorter than this stays: it moves no spectrogram frame


def _past_silence(f: sf.SoundFile | FFmpegFile, frames: int, opening: np.ndarray) -> np.ndarray:
    """The opening read (`frames` of it, or the whole file) from its first sound on, read on to its length: past
    silence, or a DC offset held before the sound (a converter's, at -39 dBFS: heard as a tom, every file alike);
    as it is when the sound starts within SHORTEST_SKIP_S (a loud start: a cosine at its crest moves less than
    INAUDIBLE from one sample to the next for a few samples) or the file is that one value throughout. A read on
    that fails (a file cut short past its opening) keeps what was read, as the opening alone was before."""
    start = _first_audible(opening, opening[0])
    if start < 0 and len(opening) == frames and np.isfinite(opening[0]).all():  # one offset throughout: read on
        return _from_first_sound(f, frames, opening)
    if start < SHORTEST_SKIP_S * f.samplerate:
        return opening
    try:
        more = _read(f, start)
    except (FFmpegError, sf.LibsndfileError, RuntimeError):
        more = opening[:0]
    return np.concatenate([opening[start:], more]) if len(more) else opening[start:]


def _first_audible(audio: np.ndarray, offset: np.ndarray) -> int:
    """The first frame of (frames, channels) audio at least INAUDIBLE away from `offset` (a frame of the
    silence before it, or its channels' mean), -1 when there is none; a NaN sample is no sound."""
    for lo, hi in ((0, FIRST_LOOK), (FIRST_LOOK, len(audio))):
        with np.errstate(invalid="ignore"):
            loud = np.flatnonzero((np.abs(audio[lo:hi] - offset) >= INAUDIBLE).any(axis=1))
        if loud.size:
            return lo + int(loud[0])
    return -1


def _read(f: sf.SoundFile | FFmpegFile, frames: int) -> np.ndarray:
    """(frames, channels) float32. 16-bit files are read as integers and scaled by numpy: libsndfile's
    own conversion is a scalar loop that took longer than the read, and the result is the same (x / 32768)."""
    if isinstance(f, FFmpegFile):
        return f.read(frames)
    if f.subtype != "PCM_16":
        return f.read(frames, dtype="float32", always_2d=True)
    audio = f.read(frames, dtype="int16", always_2d=True).astype(np.float32)
    audio *= np.float32(1 / 32768)
    return audio


def fit(audio: np.ndarray, sample_rate: int, params: SpectrogramParams, peak: float | None = None) -> np.ndarray:
    """(frames, channels) audio → (params.channels, params.n_samples): mix, resample, cut, pad. `peak`:
    the audio's largest magnitude, when the caller knows it already."""
    mixed = _mono(audio, peak) if params.mono else _two_channels(audio)
    if sample_rate != params.sample_rate:
        mixed = soxr.resample(mixed, sample_rate, params.sample_rate, quality="HQ")
    head = mixed[: params.n_samples].T
    if params.pad == "repeat" and 0 < head.shape[1] < params.n_samples:
        repeats = math.ceil(params.n_samples / head.shape[1])
        return np.ascontiguousarray(np.tile(head, (1, repeats))[:, : params.n_samples], dtype=np.float32)
    clip = np.zeros((params.channels, params.n_samples), np.float32)  # one copy into zeros, not pad's two
    clip[:, : head.shape[1]] = head
    return clip


CANCELLED_MIX = 0.05  # a mix whose peak is this far (-26 dB) below its loudest channel's cancelled itself


def _mono(audio: np.ndarray, peak: float | None = None) -> np.ndarray:
    """The channels' mean, (frames, 1). Summed column by column: numpy's mean over a row of two
    interleaved samples walks the rows one at a time, and costs more than decoding them. A stereo file
    with one channel's polarity inverted (a widening trick) sums to near silence, and its rounding residue
    was tagged: such a file is heard through its loudest channel instead."""
    if audio.shape[1] == 1:
        return audio
    mixed = audio[:, 0].copy()
    for channel in range(1, audio.shape[1]):
        mixed += audio[:, channel]
    mixed *= np.float32(1.0 / audio.shape[1])
    if not audio.size:
        return mixed[:, None]
    if peak is None:
        peak = float(max(audio.max(), -audio.min()))
    if max(mixed.max(), -mixed.min()) < CANCELLED_MIX * peak:
        loudest = max(range(audio.shape[1]), key=lambda c: float(np.abs(audio[:, c]).max()))
        return np.ascontiguousarray(audio[:, loudest])[:, None]
    return mixed[:, None]


def _two_channels(audio: np.ndarray) -> np.ndarray:
    if audio.shape[1] == 1:
        return np.repeat(audio, 2, axis=1)
    return audio[:, :2]


def changed_at(st: os.stat_result) -> int:
    """When a file last changed, as far as its stat can tell: its mtime, or its ctime when later. An mtime
    can be set back (`touch -d`, `cp -p`, an unzip), and a one-shot rewritten with another of its length
    and its old mtime kept its old tags; the ctime cannot be set. A rename or a chmod moves the ctime too,
    which costs a hash of the file's head at the next scan (its tags come back by content), no decoding."""
    return max(st.st_mtime_ns, st.st_ctime_ns)


def check_readable(path: str) -> tuple[int, int]:
    """Turn the OS's reasons into words before libsndfile hides them behind 'System error'. The file's (size,
    changed_at) as seen, for a failure to read it further on to keep (DecodeError.stamp)."""
    st = _stat(path)
    seen = (st.st_size, changed_at(st))
    # (each look below is another moment: a pack's folder renamed meanwhile took its file away, which is no
    # fault of the file's, said for good as "not a regular file", carried to the new name by the move; looked
    # at again, it is said as the first look would have)
    if not os.path.isfile(path):
        _stat(path)
        raise DecodeError("not a regular file", seen)
    if st.st_size == 0:
        raise DecodeError("empty file (0 bytes)", seen)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise DecodeError(NO_PERMISSION, seen) from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            _stat(path)
        raise unreadable("open", e, seen) from None
    return seen


def _stat(path: str) -> os.stat_result:
    """The file's stat, or DecodeError saying why there is none."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):  # its target is what is missing: an unmounted drive, a moved pack. A
            # failure to show, not a file gone: dropped from the index, it was gone from status as well
            raise DecodeError(f"{BROKEN_LINK}: {_link_target(path)} is not there") from None
        raise FileVanished(VANISHED) from None
    except PermissionError:
        raise DecodeError(NO_PERMISSION) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DecodeError("symbolic link loop") from None
        raise unreadable("stat", e) from None


# Sizes that recorders and pipes write when the length is not known yet (sox writing to a pipe, a streamed
# or interrupted recording): libsndfile reads such a file whole, and so do DAWs.
_LENGTH = re.compile(r"^Length : (\d+)$", re.M)  # libsndfile's log of a WAV: the file's size, then its chunks
_CHUNK = re.compile(r"^([A-Za-z0-9 ]{4}) : (\d+)$", re.M)
_NO_DATA = re.compile(r"^data : 0$", re.M)
_NOT_CLOSED_BYTES = 4096  # bytes no chunk accounts for, beyond which a data size of 0 is a recording not closed


def _unaccounted(info: str) -> int:
    """Bytes of a RIFF file that none of its chunks holds: the samples of a recording whose data size was never
    written (0), read as no audio at all; 0 for an empty file, however much metadata it carries."""
    length = _LENGTH.search(info)
    if length is None or not _NO_DATA.search(info):
        return 0
    chunks = [(name, int(size)) for name, size in _CHUNK.findall(info) if name not in ("RIFF", "RIFX", "RF64")]
    return int(length.group(1)) - 12 - sum(8 + size + size % 2 for _, size in chunks)


_UNKNOWN_LENGTH = frozenset({0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF, 0x80000000})
_SLACK_BYTES, _SLACK_SHARE = 64, 0.01  # a writer that counted its header in, a last odd byte or milliseconds lost


def _link_target(path: str) -> str:
    try:
        return os.path.join(os.path.dirname(path), os.readlink(path))
    except OSError:
        return "its target"


def _check_header(f: sf.SoundFile) -> None:
    _check_not_truncated(f)
    if f.frames == 0 and _unaccounted(f.extra_info) > _NOT_CLOSED_BYTES:  # "no audio frames": it has seconds
        raise DecodeError(
            "its header says it holds no audio, yet the file goes on: a recording that was not closed"
            " properly? (re-saving it in an audio editor mends it)"
        )


def _check_not_truncated(f: sf.SoundFile) -> None:
    """A file that lost more than a sliver of its audio is refused; one that lost a little (a copy cut at its
    last milliseconds, a writer that counted its header in) plays in every DAW, and is read: 2 ms short of
    3 s, it was refused as truncated. A cut RF64 or W64 file was read as whole."""
    sizes = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _SHORT_DATA.finditer(f.extra_info)}
    short = sizes.get("data") or sizes.get("SSND") or sizes.get("Riff size") or sizes.get("riff")
    if short is None:
        return
    declared, present = short
    if declared in _UNKNOWN_LENGTH or declared - present <= max(_SLACK_BYTES, _SLACK_SHARE * declared):
        return
    raise DecodeError(f"truncated or corrupt: its header declares {declared:,} bytes, the file holds {present:,}")


def _describe_libsndfile_error(e: sf.LibsndfileError) -> str:
    reason = e.error_string.strip().rstrip(".")
    # libsndfile's mp3 reader says "does not exist or is not a regular file" of a corrupt file; the file
    # has just been checked, so the words really mean it could not make sense of the bytes
    if "Format not recognised" in reason or "not a regular file" in reason:
        return "not a recognised audio format (unsupported codec, or not audio at all)"
    for said, meant in _LIBSNDFILE_SAYS.items():  # its words for a damaged file, said as a producer would
        if said in reason:
            return f"{meant} ({reason})"
    return f"cannot decode audio: {reason}"


_LIBSNDFILE_SAYS = {
    "SF_INFO struct incomplete": "damaged header: no sample rate or channel count",
    "lost sync": "truncated or corrupt",
    "file is malformed": "truncated or corrupt",
    "Unspecified internal error": "truncated or corrupt",  # its MP3 decoder's, of bytes that are no MP3 frame
}
