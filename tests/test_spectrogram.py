"""The daemon's own log-mel equals librosa's with the same parameters (it must: models are trained on it)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from vibrary.daemon.spectrogram import SpectrogramParams, dequantize, log_mel, mel_filterbank, mel_power, quantize

PARAMS = [
    SpectrogramParams(),
    SpectrogramParams(sample_rate=22050, duration_s=1.5, n_fft=1024, hop_length=256, n_mels=64, fmin=30.0, fmax=8000.0),
    SpectrogramParams(n_mels=128, top_db=60.0, ref="1.0"),
]


def _audio(params: SpectrogramParams, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(params.n_samples) / params.sample_rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    x[: params.n_samples // 3] *= 0.01  # quiet start: exercises the dB floor
    return x.astype(np.float32)


def _librosa_mel(y: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=y,
        sr=params.sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax,
        power=params.power,
    )


@pytest.mark.parametrize("params", PARAMS, ids=["default", "small", "absolute-ref"])
def test_mel_power_equals_librosa(params: SpectrogramParams) -> None:
    y = _audio(params, 1)
    ours = mel_power(y[None, :], params)[0]
    theirs = _librosa_mel(y, params)
    assert ours.shape == theirs.shape == (params.n_mels, params.n_frames)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-6 * float(theirs.max()))


@pytest.mark.parametrize("params", PARAMS, ids=["default", "small", "absolute-ref"])
def test_log_mel_equals_librosa_power_to_db(params: SpectrogramParams) -> None:
    y = _audio(params, 2)
    theirs = _librosa_mel(y, params)
    ref = np.max if params.ref == "max" else float(params.ref)
    expected = librosa.power_to_db(theirs, ref=ref, top_db=params.top_db)
    np.testing.assert_allclose(log_mel(y[None, :], params)[0], expected, atol=1e-2)


@pytest.mark.parametrize("seconds", [0.0, 0.004, 0.4, 1.7, 2.99, 3.0])
@pytest.mark.parametrize("channels", [1, 2])
def test_one_shots_padded_with_silence_equal_librosa(seconds: float, channels: int) -> None:
    """Frames past a one-shot's last sample are skipped, not transformed: they must still equal librosa's."""
    p = SpectrogramParams(mono=channels == 1)
    rng = np.random.default_rng(int(seconds * 1000) + channels)
    audio = np.zeros((channels, p.n_samples), np.float32)
    sound = int(seconds * p.sample_rate)
    audio[:, :sound] = 0.2 * rng.standard_normal((channels, sound))
    if channels == 2:
        audio[0, max(0, sound - 300) : sound] = 0.0  # the right channel goes on longer: it sets the length
    ours = mel_power(audio, p)
    for c in range(channels):
        theirs = _librosa_mel(audio[c], p)
        np.testing.assert_allclose(ours[c], theirs, rtol=1e-3, atol=1e-6 * max(1.0, float(theirs.max())))
        assert np.array_equal(ours[c] == 0, theirs == 0)  # silent frames exactly silent, no others


def test_filterbank_equals_librosa() -> None:
    p = SpectrogramParams()
    np.testing.assert_allclose(
        mel_filterbank(p), librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels), rtol=1e-5, atol=1e-8
    )


def test_default_shape_is_the_reference_96_by_259() -> None:
    p = SpectrogramParams()
    spec = log_mel(np.zeros((1, p.n_samples), np.float32), p)
    assert spec.shape == (1, 96, 259) == p.shape
    assert np.all(spec == -p.top_db)  # silence is the floor (librosa: 0 dB, the loudest input there is)


def test_quantisation_error_is_below_a_fifth_of_a_decibel() -> None:
    p = SpectrogramParams()
    spec = log_mel(_audio(p, 3)[None, :], p)
    codes = quantize(spec, p)
    assert codes.dtype == np.uint8
    assert np.abs(dequantize(codes, p) - spec).max() <= p.top_db / 255 / 2 + 1e-4


def test_params_round_trip_and_reject_nonsense() -> None:
    p = SpectrogramParams(n_mels=64, mono=False)
    assert SpectrogramParams.from_json(p.to_json()) == p
    assert p.shape[0] == 2
    assert p.key != SpectrogramParams().key
    with pytest.raises(ValueError, match="unknown spectrogram parameters"):
        SpectrogramParams.from_json('{"n_mels": 96, "bogus": 1}')
    with pytest.raises(ValueError):
        SpectrogramParams(pad="mirror")
