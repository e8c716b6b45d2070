"""Log-mel spectrograms, computed exactly as librosa does, without importing librosa.

librosa pulls in numba and scipy (seconds of start-up, ~150 MB of RSS) for a few lines of numpy, so the
daemon carries its own implementation; `tests/test_spectrogram.py` proves it equal to
`librosa.feature.melspectrogram` + `librosa.power_to_db` with the same parameters.

Every model records the `SpectrogramParams` it was trained on in its ONNX metadata, and the daemon feeds
each model spectrograms computed with those parameters: the trainer imports this same module, so the two
sides can never drift apart.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache

import numpy as np

METADATA_KEY = "vibrary.spectrogram"


@dataclass(frozen=True)
class SpectrogramParams:
    """Everything between the audio file and the network's input tensor, decoding included."""

    sample_rate: int = 44100
    duration_s: float = 3.0
    mono: bool = True  # False keeps two channels (mono files are duplicated)
    pad: str = "zero"  # how a clip shorter than duration_s is filled: "zero" or "repeat"
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    power: float = 2.0
    top_db: float = 80.0
    ref: str = "max"  # "max": level-independent (quiet and normalised files look alike, down to about -55 dBFS,
    # below which librosa's floor of 1e-10 power, kept, lifts the quietest bins); or a number

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.duration_s <= 0:
            raise ValueError("sample_rate and duration_s must be positive")
        if self.pad not in ("zero", "repeat"):
            raise ValueError(f"pad must be 'zero' or 'repeat', not {self.pad!r}")
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError("n_fft, hop_length and n_mels must be positive")
        # a model's metadata is read into these: one the spectrogram cannot be made for (an odd n_fft, a top_db
        # of null) installed, then failed every file for every model, the built-in one's tags included
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even (librosa's frequency grid), not {self.n_fft}")
        if not (isinstance(self.top_db, (int, float)) and self.top_db > 0 and self.power > 0):
            raise ValueError(f"top_db and power must be numbers above 0, not {self.top_db!r} and {self.power!r}")
        if not 0 <= self.fmin < (self.sample_rate / 2 if self.fmax is None else self.fmax) <= self.sample_rate / 2:
            raise ValueError(f"0 <= fmin < fmax <= sample_rate / 2, not {self.fmin}, {self.fmax}, {self.sample_rate}")
        if self.ref != "max":
            float(self.ref)  # raises ValueError for anything that is not a number

    @property
    def channels(self) -> int:
        return 1 if self.mono else 2

    @property
    def n_samples(self) -> int:
        return round(self.sample_rate * self.duration_s)

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop_length  # centred STFT, as librosa

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one clip's spectrogram: (channels, n_mels, n_frames)."""
        return (self.channels, self.n_mels, self.n_frames)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SpectrogramParams:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown spectrogram parameters: {sorted(unknown)}")
        return cls(**raw)

    @cached_property
    def key(self) -> str:
        """Short stable id of these parameters, used in cache keys (looked up for every file: kept)."""
        return hashlib.blake2b(self.to_json().encode(), digest_size=8).hexdigest()


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, freqs)


@lru_cache(maxsize=8)
def mel_filterbank(params: SpectrogramParams) -> np.ndarray:
    """(n_mels, 1 + n_fft/2) triangular filters with Slaney area normalisation, as librosa.filters.mel."""
    fmax = params.fmax if params.fmax is not None else params.sample_rate / 2
    fft_freqs = np.linspace(0, params.sample_rate / 2, 1 + params.n_fft // 2)
    mel_pts = np.linspace(_hz_to_mel(np.array(params.fmin)), _hz_to_mel(np.array(fmax)), params.n_mels + 2)
    mel_f = _mel_to_hz(mel_pts)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n, fftbins=True))."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


# Frames per FFT call. Materialising a clip's framed and complex arrays afresh for every file cost more in
# allocation and page faults than the FFT itself, so frames go through buffers that each worker thread
# allocates once and reuses. A 3 s clip (259 frames) is one block: in the daemon every numpy call is a
# trip through the GIL that two workers and the inference thread share, so fewer, larger calls win.
_BLOCK = 320
_GROUP = 4  # mel filters per group in the projection: fewer calls against fewer multiplied zeros
_scratch_space = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """This thread's reusable buffer: worker threads run this per file, and must not share buffers."""
    store: dict[tuple[str, tuple[int, ...], type], np.ndarray] | None = getattr(_scratch_space, "buffers", None)
    if store is None:
        store = _scratch_space.buffers = {}
    key = (name, shape, dtype)
    buf = store.get(key)
    if buf is None:
        buf = store[key] = np.empty(shape, dtype)
    return buf


@dataclass(frozen=True)
class _MelBands:
    """The filterbank as groups of adjacent filters, each with only the bins where it is non-zero.

    A triangular filter spans a few bins (the highest a few hundred), so a dense (mels × bins)
    projection mostly multiplies zeros; per group, the same sums take about an eighth of the work.
    """

    first_bin: int  # every filter is zero below this bin ...
    end_bin: int  # ... and from this one on
    groups: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (mel from, mel to, bin from, bin to, weights)


@lru_cache(maxsize=8)
def _mel_bands(params: SpectrogramParams) -> _MelBands:
    weights = mel_filterbank(params)
    groups = []
    for m0 in range(0, params.n_mels, _GROUP):
        m1 = min(params.n_mels, m0 + _GROUP)
        nonzero = np.flatnonzero(weights[m0:m1].any(axis=0))
        b0, b1 = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
        groups.append((m0, m1, b0, b1, np.ascontiguousarray(weights[m0:m1, b0:b1])))
    spans = [(b0, b1) for _, _, b0, b1, _ in groups if b1 > b0]
    first = min((b0 for b0, _ in spans), default=0)
    end = max((b1 for _, b1 in spans), default=0)
    return _MelBands(first, end, tuple((m0, m1, b0 - first, b1 - first, w) for m0, m1, b0, b1, w in groups))


def mel_power(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Mel power spectrogram of (channels, samples) audio: (channels, n_mels, frames), float32.

    Centred STFT with zero padding (librosa's `center=True, pad_mode="constant"`), in float32 as librosa
    computes it: scipy's pocketfft transforms a block of float32 frames several at a time, four times
    faster than numpy's float64 FFT and within 1e-6 of it.
    """
    import scipy.fft  # here: 0.3 s that every `vibrary` command paid at its start, for a model's metadata

    audio = np.asarray(audio, dtype=np.float32)
    channels, samples = audio.shape
    half = params.n_fft // 2
    padded = _scratch("padded", (channels, samples + 2 * half), np.float32)  # np.pad allocates every call
    padded[:, :half] = 0.0
    padded[:, half + samples :] = 0.0
    padded[:, half : half + samples] = audio
    n_frames = 1 + samples // params.hop_length
    step, item = padded.strides
    frames = np.ndarray(
        (channels, n_frames, params.n_fft), np.float32, padded, 0, (step, params.hop_length * item, item)
    )
    bands = _mel_bands(params)
    span = bands.end_bin - bands.first_bin
    window = _window(params.n_fft)
    windowed = _scratch("windowed", (_BLOCK, params.n_fft), np.float32)
    power = _scratch("power", (n_frames, span), np.float32)
    out = np.zeros((channels, params.n_mels, n_frames), np.float32)
    live = _live_frames(audio, params, n_frames)
    if live < n_frames:
        power[live:] = 0.0
    for channel, channel_frames in enumerate(frames):
        for start in range(0, live, _BLOCK):
            n = min(_BLOCK, live - start)
            np.multiply(channel_frames[start : start + n], window, out=windowed[:n])
            spectrum = scipy.fft.rfft(windowed[:n], axis=-1, workers=1, overwrite_x=True)
            parts = spectrum[:, bands.first_bin : bands.end_bin].view(np.float32)  # re, im side by side
            np.square(parts, out=parts)  # contiguous: vectorised, unlike squaring .real and .imag apart
            pairs = parts.reshape(n, span, 2)
            np.add(pairs[..., 0], pairs[..., 1], out=power[start : start + n])
        if live == 0:
            continue
        live_power = power[:live]
        if params.power != 2.0:
            np.power(live_power, params.power / 2.0, out=live_power)
        for m0, m1, b0, b1, weights in bands.groups:
            if b1 > b0:  # (filters narrower than a bin are zero, as in librosa)
                np.matmul(weights, live_power[:, b0:b1].T, out=out[channel, m0:m1, :live])
    return out


_RUN = 512  # samples per step of the search for the last non-zero one


def _live_frames(audio: np.ndarray, params: SpectrogramParams, n_frames: int) -> int:
    """How many leading frames reach a non-zero sample; the rest see only the zero padding.

    Most one-shots are shorter than the clip and padded with zeros (half of the benchmark's frames).
    The FFT of an all-zero frame is exactly zero, so such frames are left at zero power instead of
    transformed: the same result, bit for bit, for less work. The last non-zero sample is found on the
    samples' bits (-0.0 counts as non-zero, which only costs a transform) a run of samples at a time.
    """
    bits = audio.view(np.uint32)
    bits = np.bitwise_or.reduce(bits, axis=0) if bits.shape[0] > 1 else bits[0]
    whole = bits.shape[0] // _RUN * _RUN
    tail = np.flatnonzero(bits[whole:])
    if tail.size:
        last = whole + int(tail[-1])
    else:
        runs = np.flatnonzero(np.bitwise_or.reduce(bits[:whole].reshape(-1, _RUN), axis=1))
        if not runs.size:
            return 0  # silence throughout
        run = int(runs[-1]) * _RUN
        last = run + int(np.flatnonzero(bits[run : run + _RUN])[-1])
    # frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2) of the unpadded clip
    return min(n_frames, (last + params.n_fft // 2) // params.hop_length + 1)


def power_to_db(power: np.ndarray, params: SpectrogramParams, amin: float = 1e-10) -> np.ndarray:
    """10·log10(S / ref) with an amin floor and a top_db floor below the peak, as librosa.power_to_db;
    except that digital silence is the floor, -top_db: librosa makes it 0 dB, the loudest input there is,
    and a file silent for its first seconds came out tagged with confidence."""
    ref = float(np.max(power)) if params.ref == "max" else float(params.ref)
    if params.ref == "max" and ref <= amin and params.top_db is not None:
        return np.full(np.shape(power), -params.top_db, dtype=np.float32)
    db = np.maximum(np.asarray(power, dtype=np.float32), amin)
    np.log10(db, out=db)
    db *= 10.0
    db -= 10.0 * np.log10(max(amin, ref))
    if params.top_db is not None:
        np.maximum(db, db.max() - params.top_db, out=db)
    return db


def log_mel(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """The network's input for one clip: (channels, n_mels, n_frames) log-mel in dB, float32."""
    return power_to_db(mel_power(audio, params), params)


# Spectrograms are stored and shipped as 8-bit codes over [-top_db, 0] dB when ref is "max" (0.3 dB
# steps, far below what a network can hear); absolute-reference spectrograms stay float16.
def quantize(spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    if params.ref != "max":
        return spec.astype(np.float16)
    scaled = np.divide(spec, -params.top_db)  # the same arithmetic in one buffer instead of four
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled *= 255.0
    return np.round(scaled, out=scaled).astype(np.uint8)


def dequantize(codes: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    if codes.dtype != np.uint8:
        return codes.astype(np.float32)
    spec = codes.astype(np.float32)
    spec *= -params.top_db / 255.0
    return spec


def as_fed(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """A clip's spectrogram as models are fed it: through the cache's 8-bit quantisation, so that a file gets
    the same tags whether its spectrogram came from the cache or from the audio."""
    return dequantize(quantize(log_mel(audio, params), params), params)


SILENT = "no sound above -70 dBFS in its first minute"


def heard_in(spec: np.ndarray) -> bool:
    """Whether a clip has any sound in it. A spectrogram flat throughout (a file silent for its opening
    seconds: a stem that starts late) tells a model nothing: its guess (kick 0.24) was stored as the file's
    best tag and found by `vibrary search kick`, and a dataset trained on it as an example of its tag."""
    return bool(spec.max() > spec.min())
