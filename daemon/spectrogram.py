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
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

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
    ref: str = "max"  # "max": level-independent (quiet and normalised files look alike); or a number

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.duration_s <= 0:
            raise ValueError("sample_rate and duration_s must be positive")
        if self.pad not in ("zero", "repeat"):
            raise ValueError(f"pad must be 'zero' or 'repeat', not {self.pad!r}")
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError("n_fft, hop_length and n_mels must be positive")
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

    @property
    def key(self) -> str:
        """Short stable id of these parameters, used in cache keys."""
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


def mel_power(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Mel power spectrogram of (channels, samples) audio: (channels, n_mels, frames), float32.

    Centred STFT with zero padding (librosa's `center=True, pad_mode="constant"`).
    """
    audio = np.asarray(audio, dtype=np.float32)
    half = params.n_fft // 2
    padded = np.pad(audio, ((0, 0), (half, half)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft, axis=-1)[:, :: params.hop_length]
    # numpy's float64 FFT is ~3x faster than its float32 one (numpy 2.x), and closer to librosa
    spectrum = np.fft.rfft(frames * _window(params.n_fft).astype(np.float64), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    spectrum = (power if params.power == 2.0 else np.sqrt(power) ** params.power).astype(np.float32)
    # (channels, frames, bins) @ (bins, mels) -> (channels, mels, frames)
    return np.matmul(spectrum, mel_filterbank(params).T).transpose(0, 2, 1)


def power_to_db(power: np.ndarray, params: SpectrogramParams, amin: float = 1e-10) -> np.ndarray:
    """10·log10(S / ref) with an amin floor and a top_db floor below the peak, as librosa.power_to_db."""
    ref = float(np.max(power)) if params.ref == "max" else float(params.ref)
    db = 10.0 * np.log10(np.maximum(amin, power)) - 10.0 * np.log10(max(amin, ref))
    if params.top_db is not None:
        db = np.maximum(db, db.max() - params.top_db)
    return db.astype(np.float32)


def log_mel(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """The network's input for one clip: (channels, n_mels, n_frames) log-mel in dB, float32."""
    return power_to_db(mel_power(audio, params), params)


# Spectrograms are stored and shipped as 8-bit codes over [-top_db, 0] dB when ref is "max" (0.3 dB
# steps, far below what a network can hear); absolute-reference spectrograms stay float16.
def quantize(spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    if params.ref != "max":
        return spec.astype(np.float16)
    scaled = np.clip(spec / -params.top_db, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def dequantize(codes: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    if codes.dtype != np.uint8:
        return codes.astype(np.float32)
    return codes.astype(np.float32) * (-params.top_db / 255.0)
