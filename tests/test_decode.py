"""Decoding: real files in every supported container, resampled, mixed down, cut and padded."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from vibrary.daemon.decode import DecodeError, TryLater, decode, is_audio_path
from vibrary.daemon.features import fingerprint
from vibrary.daemon.spectrogram import SpectrogramParams

from tests.synth import tone, write_encoded, write_tone

P = SpectrogramParams()


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * sr / x.size)


@pytest.mark.parametrize(
    ("name", "fmt", "subtype", "sr", "channels"),
    [
        ("a.wav", "WAV", "PCM_16", 44100, 1),
        ("b.wav", "WAV", "PCM_24", 96000, 2),
        ("c.aiff", "AIFF", "PCM_16", 48000, 2),
        ("d.flac", "FLAC", "PCM_24", 22050, 1),
        ("e.ogg", "OGG", "VORBIS", 44100, 2),
        ("f.mp3", "MP3", "MPEG_LAYER_III", 44100, 1),
        ("g.wav", "WAV", "FLOAT", 32000, 1),
        # what libsndfile does not read, FFmpeg does: it left .m4a out unsaid, refused Apple Loops' codecs
        ("h.m4a", "ipod", "aac", 44100, 2),
        ("i.m4a", "ipod", "alac", 48000, 1),
        ("j.caf", "caf", "alac", 44100, 2),
        ("k.aac", "adts", "aac", 22050, 1),
    ],
)
def test_formats_decode_to_the_same_tone(
    tmp_path: Path, name: str, fmt: str, subtype: str, sr: int, channels: int
) -> None:
    if fmt in ("ipod", "caf", "adts"):
        path = write_encoded(tmp_path / name, tone(1000.0, 1.0, sr, channels=channels), sr, fmt, subtype)
    else:
        path = write_tone(tmp_path / name, 1000.0, seconds=1.0, sr=sr, subtype=subtype, channels=channels, fmt=fmt)
    assert is_audio_path(str(path))
    clip = decode(str(path), P)
    assert clip.shape == (1, P.n_samples) and clip.dtype == np.float32
    voiced = clip[0, : int(0.8 * P.sample_rate)]
    assert abs(_peak_hz(voiced, P.sample_rate) - 1000.0) < 10.0
    assert 0.2 < np.abs(voiced).max() < 0.7
    # zero padded after the 1-s tone (and after an AAC stream's encoder delay, 46 ms at 22.05 kHz)
    assert np.all(clip[0, int(1.1 * P.sample_rate) :] == 0.0)


def test_a_file_named_aac_that_is_another_format_is_read_as_what_it_is(tmp_path: Path) -> None:
    """A WAV or a FLAC named .aac (a download's wrong name) failed as "not a recognised audio format", where the
    same file named .m4a was read: a bare AAC stream is taken as one only when it starts as one."""
    for fmt, name in (("WAV", "wav.aac"), ("FLAC", "flac.aac")):
        path = write_tone(tmp_path / name, 1000.0, seconds=1.0, fmt=fmt)
        assert abs(_peak_hz(decode(str(path), P)[0, : P.sample_rate // 2], P.sample_rate) - 1000.0) < 10.0


def test_only_the_first_seconds_are_read_and_long_files_are_cut(tmp_path: Path) -> None:
    sr = 44100
    x = np.concatenate([tone(200.0, 3.0, sr), tone(5000.0, 7.0, sr)])
    sf.write(tmp_path / "long.wav", x, sr)
    clip = decode(str(tmp_path / "long.wav"), P)
    assert clip.shape == (1, P.n_samples)
    assert abs(_peak_hz(clip[0, : 2 * sr], sr) - 200.0) < 5.0


def test_stereo_is_mixed_down_and_can_be_kept(tmp_path: Path) -> None:
    sr = 44100
    left, right = tone(300.0, 1.0, sr)[:, 0], np.zeros(sr, np.float32)
    sf.write(tmp_path / "lr.wav", np.stack([left, right], axis=1), sr)
    mono = decode(str(tmp_path / "lr.wav"), P)
    np.testing.assert_allclose(mono[0, :sr], (left + right) / 2, atol=1e-4)
    stereo = decode(str(tmp_path / "lr.wav"), SpectrogramParams(mono=False))
    assert stereo.shape == (2, P.n_samples)
    np.testing.assert_allclose(stereo[1, :sr], 0.0, atol=1e-4)


def test_repeat_padding_loops_short_clips(tmp_path: Path) -> None:
    sr = 44100
    write_tone(tmp_path / "short.wav", 440.0, seconds=0.5, sr=sr)
    clip = decode(str(tmp_path / "short.wav"), SpectrogramParams(pad="repeat"))
    np.testing.assert_allclose(clip[0, sr // 2 : sr], clip[0, : sr // 2], atol=1e-6)


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio\n" * 20)
    with pytest.raises(DecodeError, match="empty file"):
        decode(str(tmp_path / "empty.wav"), P)
    with pytest.raises(DecodeError, match="not a recognised audio format"):
        decode(str(tmp_path / "text.wav"), P)
    with pytest.raises(DecodeError, match="not found"):
        decode(str(tmp_path / "missing.wav"), P)
    with pytest.raises(DecodeError, match="not a regular file"):
        decode(str(tmp_path), P)


def test_a_short_aac_one_shot_decodes(tmp_path: Path) -> None:
    """FFmpeg, given a file object and no name, guessed the format from the first bytes and took this one for
    no audio at all ("not a recognised audio format"), for good."""
    shot = write_encoded(tmp_path / "shot.aac", tone(440.0, 0.1, 8000), 8000, "adts", "aac")
    clip = decode(str(shot), P)
    assert 0.2 < np.abs(clip[0, : P.sample_rate // 3]).max() < 0.7  # (after the encoder delay: 0.13 s at 8 kHz)


def test_an_opus_file_libsndfile_finds_malformed_is_read_by_ffmpeg(tmp_path: Path) -> None:
    """FFmpeg's Opus files of some lengths end their stream inside the last packet, which libsndfile refuses as
    malformed (its issue #888); opusinfo and every player read them. One cut short is still refused, as
    libsndfile says it."""
    whole = write_encoded(tmp_path / "n.opus", tone(440.0, 45768 / 48000, 48000), 48000, "ogg", "libopus")
    with pytest.raises(sf.LibsndfileError, match="malformed"):
        sf.SoundFile(str(whole))  # (the case itself: a libsndfile that reads it makes this test moot)
    clip = decode(str(whole), P)
    assert abs(_peak_hz(clip[0, : P.sample_rate // 2], P.sample_rate) - 440.0) < 10.0
    (tmp_path / "cut.opus").write_bytes(whole.read_bytes()[:3000])
    with pytest.raises(DecodeError, match=r"^truncated or corrupt \(Supported file format but file is malformed\)"):
        decode(str(tmp_path / "cut.opus"), P)


def test_what_ffmpeg_cannot_read_is_said_clearly(tmp_path: Path) -> None:
    (tmp_path / "text.m4a").write_text("not audio\n" * 20)
    with pytest.raises(DecodeError, match=r"^not a recognised audio format"):
        decode(str(tmp_path / "text.m4a"), P)
    import av

    whole = write_encoded(tmp_path / "a.m4a", tone(440.0, 2.0), 44100, "ipod", "aac", movflags="faststart")
    data = whole.read_bytes()
    with av.open(str(whole)) as container:
        starts = [p.pos for p in container.demux(container.streams.audio[0]) if p.pos is not None and p.pos > 0]
    # an index up front, its audio cut short: after a packet (the stream ends early), or within one
    for cut, said in ((starts[20], "its audio ends after"), (starts[40] + 5, "its audio breaks off after")):
        (tmp_path / "cut.m4a").write_bytes(data[:cut])
        with pytest.raises(DecodeError, match=f"^truncated or corrupt: {said}"):
            decode(str(tmp_path / "cut.m4a"), P)
    data = write_encoded(tmp_path / "a.m4a", tone(440.0, 2.0), 44100, "ipod", "aac").read_bytes()  # index last
    (tmp_path / "cut.m4a").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"^not a recognised audio format"):
        decode(str(tmp_path / "cut.m4a"), P)


def test_an_unknown_codec_and_a_failing_read_in_an_m4a_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audio stream FFmpeg has no decoder for raised AttributeError, and a read that failed (a share gone
    away) escaped as OSError: "internal error", never read again."""
    import errno
    import io

    from vibrary.daemon import decode_ffmpeg

    whole = write_encoded(tmp_path / "a.m4a", tone(440.0, 2.0), 44100, "ipod", "aac", movflags="faststart")
    data = bytearray(whole.read_bytes().replace(b"mp4a", b"zzzz", 1))
    data[data.find(b"\x04\x80\x80\x80") + 5] = 0xFF  # its decoder config's object type: none known
    (tmp_path / "odd.m4a").write_bytes(bytes(data))
    with pytest.raises(DecodeError, match=r"^unsupported audio codec"):
        decode(str(tmp_path / "odd.m4a"), P)

    class Failing(io.FileIO):
        code = 0

        def read(self, size: int | None = -1) -> bytes:
            raise OSError(self.code, os.strerror(self.code))

    for code, kind in ((errno.ENOTCONN, TryLater), (errno.EIO, DecodeError)):
        Failing.code = code
        monkeypatch.setattr(decode_ffmpeg, "open", lambda name, mode: Failing(name, mode), raising=False)
        with pytest.raises(kind, match=f"^cannot read file: {os.strerror(code)}$"):
            decode(str(whole), P)


def test_audio_extensions() -> None:
    assert is_audio_path("/x/Kick_01.WAV") and is_audio_path("a.flac") and is_audio_path("b.mp3")
    assert not is_audio_path("notes.txt") and not is_audio_path("drumkit.xml") and not is_audio_path("x.wav.part")


def test_float_samples_far_past_full_scale_are_refused_or_give_a_finite_spectrogram(tmp_path: Path) -> None:
    """A corrupt or mislabelled float file (samples ~1e18, random bit patterns near 3e38, NaN): the mix or the
    power spectrum overflowed, and the NaN spectrogram was quantized to 0 dB everywhere, tagged; then, clipped,
    such files were tagged from garbage (every other sample NaN: bass), and all NaN said "silent". Many such
    samples are a clear error; a few (a glitch in a real note) are no sound, and the rest is read."""
    from vibrary.daemon.spectrogram import log_mel

    params = SpectrogramParams()
    huge = tone(440.0, 1.0) * 1e18
    noise = np.random.default_rng(0).integers(0, 2**32, (44100, 2), dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = tone(440.0, 1.0)
    halves[::2] = np.nan
    for name, audio in (
        ("huge.wav", huge),
        ("bits.wav", np.nan_to_num(noise, nan=0.0, posinf=3e38, neginf=-3e38)),
        ("halves.wav", halves),
        ("nan.wav", np.full(44100, np.nan, np.float32)),
    ):
        sf.write(tmp_path / name, audio, 44100, subtype="FLOAT")
        with pytest.raises(
            DecodeError, match=r"corrupt audio: [\d,]+ of its [\d,]+ samples are not numbers or far beyond"
        ):
            decode(str(tmp_path / name), params)
    glitch = tone(440.0, 1.0) * 0.5
    glitch[1000:1010] = 1e18
    sf.write(tmp_path / "glitch.wav", glitch, 44100, subtype="FLOAT")
    spec = log_mel(decode(str(tmp_path / "glitch.wav"), params), params)
    assert np.isfinite(spec).all() and spec.min() >= -params.top_db - 1e-3 and spec.max() <= 1e-3
    assert spec.min() < -1.0  # not one flat 0 dB
    shot = tone(440.0, 200 / 44100)
    shot[100] = np.nan  # one glitch in a one-shot of 200 samples is not 0.1 % of a file gone wrong
    sf.write(tmp_path / "shot.wav", shot, 44100, subtype="FLOAT")
    assert decode(str(tmp_path / "shot.wav"), params).any()
    sf.write(tmp_path / "tiny.wav", np.full(50, np.nan, np.float32), 44100, subtype="FLOAT")  # all of it wild
    with pytest.raises(DecodeError, match="corrupt audio: 50 of its 50 samples"):
        decode(str(tmp_path / "tiny.wav"), params)


def test_a_constant_offset_is_no_sound(tmp_path: Path) -> None:
    """A DC bias (an old converter's, some packs' one-shots) under a faint hiss read as a kick (0.88), and a
    late stem with one was tagged from its silent opening: its sound 20 s in never read."""
    params = SpectrogramParams(sample_rate=22050)
    rng = np.random.default_rng(0)
    biased = np.full(3 * 22050, 1e-3, np.float32) + rng.normal(0, 1e-5, 3 * 22050).astype(np.float32)
    sf.write(tmp_path / "biased.wav", biased, 22050, subtype="FLOAT")
    assert not decode(str(tmp_path / "biased.wav"), params).any()  # silent, as without the offset
    late = np.concatenate([np.zeros(20 * 22050, np.float32), tone(440.0, 3.0, sr=22050)[:, 0]]) + np.float32(1e-3)
    sf.write(tmp_path / "late.wav", late, 22050, subtype="FLOAT")
    heard = decode(str(tmp_path / "late.wav"), params)[0]
    assert np.abs(np.diff(heard[:2205])).max() > 1e-2  # the tone from its start (not the offset's flat line)
    sf.write(tmp_path / "click.wav", np.full(10, 0.5, np.float32), 22050, subtype="FLOAT")
    assert decode(str(tmp_path / "click.wav"), params).any()  # constant, but loud: a click
    sf.write(tmp_path / "shot.wav", biased[:22050], 22050, subtype="FLOAT")  # a one-shot of it: a kick again
    assert not decode(str(tmp_path / "shot.wav"), params).any()


def test_a_file_name_that_is_not_utf8_decodes(tmp_path: Path) -> None:
    """os.walk and inotify give such names as str with escaped bytes; soundfile could not encode them."""
    write_tone(tmp_path / "plain.wav", 440.0)
    odd = tmp_path / "na\udcefve_kick.wav"  # b"na\xefve_kick.wav": Latin-1 bytes, as an old archive has them
    (tmp_path / "plain.wav").rename(odd)
    assert decode(str(odd), SpectrogramParams()).any()


def test_a_wav_of_unknown_length_decodes_and_a_cut_one_does_not(tmp_path: Path) -> None:
    """sox writing to a pipe, or a recorder cut off, leaves the data size at a "not known yet" value that
    every player reads past; such files were refused as truncated. A file that really lost most of its
    audio still is (RF64 and W64 ones too), and one that lost a little, or whose header overcounts, is not."""
    import struct

    params = SpectrogramParams(sample_rate=44100)
    sf.write(tmp_path / "whole.wav", tone(440.0, 1.0), 44100, subtype="PCM_16")
    whole = (tmp_path / "whole.wav").read_bytes()
    at = whole.index(b"data") + 4
    expected = decode(str(tmp_path / "whole.wav"), params)
    for name, size in (("pipe.wav", 0x7FFFF000), ("stream.wav", 0xFFFFFFFF), ("overcount.wav", 88200 + 36)):
        data = bytearray(whole)
        struct.pack_into("<I", data, at, size)
        (tmp_path / name).write_bytes(bytes(data))
        assert np.array_equal(decode(str(tmp_path / name), params), expected), name
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode(str(tmp_path / "cut.wav"), params)
    sf.write(tmp_path / "whole.aiff", tone(440.0, 1.0), 44100, subtype="PCM_16")
    aiff = (tmp_path / "whole.aiff").read_bytes()
    (tmp_path / "cut.aiff").write_bytes(aiff[: len(aiff) // 2])  # libsndfile says " SSND", indented: missed
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode(str(tmp_path / "cut.aiff"), params)
    (tmp_path / "short.wav").write_bytes(whole[:-100])  # 1 ms lost at its end: every DAW plays it, so do we
    assert decode(str(tmp_path / "short.wav"), params).any()
    (tmp_path / "most.wav").write_bytes(whole[: len(whole) * 6 // 10])  # 40 % lost: refused, as a cut file
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode(str(tmp_path / "most.wav"), params)
    for container in ("RF64", "W64"):  # their sizes are said elsewhere: a cut one was read as whole
        sf.write(tmp_path / f"whole.{container}", tone(440.0, 1.0), 44100, format=container, subtype="PCM_16")
        whole_bytes = (tmp_path / f"whole.{container}").read_bytes()
        (tmp_path / f"cut.{container}").write_bytes(whole_bytes[: len(whole_bytes) // 2 - 64])
        with pytest.raises(DecodeError, match="truncated or corrupt"):
            decode(str(tmp_path / f"cut.{container}"), params)


def test_infinite_samples_are_silence_not_full_scale_clicks(tmp_path: Path) -> None:
    """+inf in a float file became a full-scale sample: one of them in a piano note made it a snare."""
    audio = tone(440.0, 1.0)
    audio[1000] = np.inf
    audio[2000] = -np.inf
    sf.write(tmp_path / "inf.wav", audio, 44100, subtype="FLOAT")
    clip = decode(str(tmp_path / "inf.wav"), SpectrogramParams())
    assert clip[0, 1000] == 0.0 and clip[0, 2000] == 0.0 and np.abs(clip).max() <= 0.5 + 1e-6


def test_a_stereo_file_with_one_channel_inverted_is_heard_through_a_channel(tmp_path: Path) -> None:
    """L = -R sums to silence in a mono mix (its rounding residue was tagged: a kick came out a tom); an
    ordinary stereo file is still mixed."""
    left = tone(440.0, 1.0)[:, 0]
    sf.write(tmp_path / "wide.wav", np.stack([left, -left], axis=1), 44100, subtype="PCM_16")
    sf.write(tmp_path / "plain.wav", np.stack([left, 0.5 * left], axis=1), 44100, subtype="PCM_16")
    params = SpectrogramParams()
    wide = decode(str(tmp_path / "wide.wav"), params)[0]
    assert np.abs(wide).max() > 0.45  # the channel, not the cancelled mix
    plain = decode(str(tmp_path / "plain.wav"), params)[0]
    assert abs(np.abs(plain).max() - 0.375) < 0.01  # the mean of 0.5 and 0.25


def test_files_whose_audio_lies_behind_megabytes_of_metadata_are_told_apart(tmp_path: Path) -> None:
    """The content hash read the first 4 MiB: two WAVs with the same 5 MiB of artwork before different
    audio got one content id, and the second took the first one's tags. Files alike but for their
    audio are told apart, in WAV, AIFF, MP3 (ID3v2) and FLAC alike."""
    import struct

    from vibrary.daemon.features import audio_start, fingerprint

    art = bytes(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8))
    prints = []
    for name, freq in (("kick.wav", 60.0), ("hat.wav", 8000.0)):
        ringing_out = np.concatenate([tone(freq, 1.0), np.zeros((2 * 44100, 1), np.float32)])  # tails alike
        sf.write(tmp_path / name, ringing_out, 44100, subtype="PCM_16")
        plain = (tmp_path / name).read_bytes()
        chunk = b"id3 " + struct.pack("<I", len(art)) + art
        body = plain[12:36] + chunk + plain[36:]  # fmt, then the artwork, then the data chunk
        (tmp_path / name).write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
        assert np.abs(decode(str(tmp_path / name), SpectrogramParams())).max() > 0.4  # still a WAV
        prints.append(fingerprint(str(tmp_path / name)).hash)
    assert prints[0] != prints[1]

    syncsafe = bytes((len(art) >> s) & 0x7F for s in (21, 14, 7, 0))
    (tmp_path / "x.mp3").write_bytes(b"ID3\x04\x00\x00" + syncsafe + art + b"\xff\xfb" + b"\x00" * 100)
    flac_blocks = b"\x00" + (34).to_bytes(3, "big") + b"\x00" * 34 + b"\x86" + len(art).to_bytes(3, "big") + art
    (tmp_path / "x.flac").write_bytes(b"fLaC" + flac_blocks + b"\xff\xf8")
    aiff_chunks = b"COMM" + struct.pack(">I", 18) + b"\x00" * 18 + b"ID3 " + struct.pack(">I", len(art)) + art
    (tmp_path / "x.aiff").write_bytes(b"FORM\x00\x00\x00\x00AIFF" + aiff_chunks + b"SSND" + b"\x00" * 16)
    for name, expected in (
        ("x.mp3", 10 + len(art)),
        ("x.flac", 4 + 38 + 4 + len(art)),
        ("x.aiff", 12 + 26 + 8 + len(art) + 16),
    ):
        with open(tmp_path / name, "rb", buffering=0) as f:
            assert audio_start(f, f.read(12)) == expected, name


def test_a_broken_link_names_its_missing_target(tmp_path: Path) -> None:
    """It said "file not found (deleted or moved…)" of a link whose drive was not mounted; and, taken for a
    file gone, it left the index, and status, without a word."""
    from vibrary.daemon.decode import FileVanished

    (tmp_path / "link.wav").symlink_to(tmp_path / "Drive" / "kick.wav")
    with pytest.raises(DecodeError, match=f"broken symbolic link: {tmp_path / 'Drive' / 'kick.wav'} is not there") as e:
        decode(str(tmp_path / "link.wav"), SpectrogramParams())
    assert not isinstance(e.value, FileVanished)


def test_opening_seconds_of_dither_or_a_noise_floor_are_silence_and_the_first_sound_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spectrograms are scaled to their own peak, so 3 s of 16-bit dither before a late entry looked like
    a hi-hat (0.74) to the model: anything under -70 dBFS is silence, and a silent opening is read past, to
    the first sound within LOOK_AHEAD_S (stop 22 decoded it as silence: the file had no tags at all); a
    file of dither alone, or whose sound comes later, is silence; a quiet sound is not."""
    from vibrary.daemon import decode as decode_module

    rng = np.random.default_rng(0)
    dither = (rng.random(4 * 44100) - rng.random(4 * 44100)) / 32768  # TPDF, ±1 LSB
    entry = tone(440.0, 1.0)[:, 0]
    sf.write(tmp_path / "late.wav", np.concatenate([dither, entry]).astype(np.float32), 44100, subtype="PCM_16")
    clip = decode(str(tmp_path / "late.wav"), SpectrogramParams())[0]
    heard = len(entry) - 1  # from its first audible sample: the tone's second (sin 0 is silent)
    assert np.allclose(clip[:heard], entry[1:], atol=1e-4) and not clip[heard:].any()
    sf.write(tmp_path / "dither.wav", dither.astype(np.float32), 44100, subtype="PCM_16")
    assert not decode(str(tmp_path / "dither.wav"), SpectrogramParams()).any()
    monkeypatch.setattr(decode_module, "LOOK_AHEAD_S", 4.2)  # the entry (4 s) in a last, short block: read whole
    clip = decode(str(tmp_path / "late.wav"), SpectrogramParams())[0]
    assert np.allclose(clip[:heard], entry[1:], atol=1e-4)
    monkeypatch.setattr(decode_module, "LOOK_AHEAD_S", 3.5)  # the entry at 4 s is beyond it
    assert not decode(str(tmp_path / "late.wav"), SpectrogramParams()).any()
    sf.write(tmp_path / "quiet.wav", tone(440.0, 1.0, amp=10 ** (-50 / 20)), 44100, subtype="PCM_24")
    assert decode(str(tmp_path / "quiet.wav"), SpectrogramParams()).any()  # -50 dBFS is quiet, not silent


@pytest.mark.parametrize("silence_s", [0.05, 1.0, 2.9])
def test_the_silence_before_a_first_sound_is_skipped_whatever_its_length(tmp_path: Path, silence_s: float) -> None:
    """Only a silent opening of the whole 3 s was read past: a piano note bounced with 2.9 s of pre-roll was
    heard as silence and a click (snare 0.21, not piano 0.98). A file that opens loud starts where it starts
    (a cosine at its crest changes by less than -70 dBFS from one sample to the next)."""
    t = np.arange(2 * 44100) / 44100
    note = (0.5 * np.sin(2 * np.pi * 440 * t + 0.01) * np.exp(-2 * t)).astype(np.float32)[:, None]  # (0.005 first)
    sf.write(tmp_path / "note.wav", note, 44100, subtype="PCM_24")
    late = np.concatenate([np.zeros((int(silence_s * 44100), 1), np.float32), note])
    sf.write(tmp_path / "late.wav", late, 44100, subtype="PCM_24")
    params = SpectrogramParams()
    assert np.allclose(
        decode(str(tmp_path / "late.wav"), params), decode(str(tmp_path / "note.wav"), params), atol=1e-6
    )
    quiet = (10 ** (-50 / 20) * np.cos(2 * np.pi * 440 * t) * np.exp(-2 * t)).astype(np.float32)[:, None]
    sf.write(tmp_path / "quiet.wav", quiet, 44100, subtype="FLOAT")  # -50 dBFS: quiet, its pre-roll skipped too
    sf.write(
        tmp_path / "quiet late.wav",
        np.concatenate([np.zeros_like(late[: len(late) - len(note)]), quiet]),
        44100,
        subtype="FLOAT",
    )
    assert np.array_equal(decode(str(tmp_path / "quiet late.wav"), params), decode(str(tmp_path / "quiet.wav"), params))
    crest = (0.8 * np.cos(2 * np.pi * 50 * np.arange(44100) / 44100)).astype(np.float32)
    sf.write(tmp_path / "crest.wav", crest, 44100, subtype="FLOAT")
    assert np.array_equal(
        decode(str(tmp_path / "crest.wav"), SpectrogramParams(sample_rate=44100))[0, :100], crest[:100]
    )


@pytest.mark.parametrize("held_s", [1.0, 3.5])
def test_a_dc_offset_held_before_the_first_sound_is_skipped_as_silence_is(tmp_path: Path, held_s: float) -> None:
    """A converter's offset of -39 dBFS before the note (a constant above -40 dBFS counts as sound) was the
    clip to the model: a piano, a guitar, brass and a kick were each a tom 0.41. A file of one value throughout
    is itself, as before."""
    t = np.arange(2 * 44100) / 44100
    note = (0.5 * np.sin(2 * np.pi * 440 * t + 0.01) * np.exp(-2 * t)).astype(np.float32)
    sf.write(tmp_path / "note.wav", note, 44100, subtype="FLOAT")
    offset = np.full(int(held_s * 44100), 0.011, np.float32)
    sf.write(tmp_path / "late.wav", np.concatenate([offset, note]), 44100, subtype="FLOAT")
    params = SpectrogramParams()
    assert np.array_equal(decode(str(tmp_path / "late.wav"), params), decode(str(tmp_path / "note.wav"), params))
    sf.write(tmp_path / "flat.wav", np.full(4 * 44100, 0.5, np.float32), 44100, subtype="FLOAT")
    assert decode(str(tmp_path / "flat.wav"), params).any()


def test_a_file_cut_short_past_its_opening_decodes_as_before_when_its_silence_is_skipped(tmp_path: Path) -> None:
    """Reading on past the silence before the first sound reached the cut of an AAC file cut short at 4 s of 10,
    and it failed ("its audio breaks off"), where its opening alone had decoded."""
    t = np.arange(7 * 44100) / 44100
    audio = np.zeros((10 * 44100, 1), np.float32)
    audio[int(1.5 * 44100) : int(1.5 * 44100) + len(t), 0] = 0.5 * np.sin(2 * np.pi * 220 * t) * np.exp(-t)
    whole = write_encoded(tmp_path / "whole.m4a", audio, 44100, "ipod", "aac", movflags="faststart")
    data = whole.read_bytes()
    body = data.find(b"mdat")
    (tmp_path / "cut.m4a").write_bytes(data[: body + (len(data) - body) * 4 // 10])
    clip = decode(str(tmp_path / "cut.m4a"), SpectrogramParams())
    assert clip.any() and np.allclose(clip[0, :1000], decode(str(whole), SpectrogramParams())[0, :1000], atol=1e-3)


def test_a_file_whose_path_is_longer_than_libsndfile_takes_is_decoded(tmp_path: Path) -> None:
    """Packs nest long folder names: libsndfile refused names over ~1024 bytes ("Supplied filename too
    long"), the system takes 4096."""
    import os
    import shutil

    short = write_tone(tmp_path / "kick.wav", 100.0)
    deep = tmp_path.joinpath(*["Very Long Sample Pack Folder Name " * 6] * 6)
    deep.mkdir(parents=True)
    shutil.copyfile(short, deep / "kick 01.wav")
    assert len(os.fsencode(str(deep / "kick 01.wav"))) > 1100
    params = SpectrogramParams()
    assert np.array_equal(decode(str(deep / "kick 01.wav"), params), decode(str(short), params))


def test_a_hard_link_made_while_a_file_is_read_is_no_change_of_it(tmp_path: Path) -> None:
    """A hard link made or removed (a `cp -al` backup, a deduplicator) moves the file's ctime, and files read
    at that moment failed as "changed while it was being read" until the next rescan, hours later (a QA
    session). A rewrite still tells: its size, or a newer mtime."""
    import os
    import time

    from vibrary.daemon.features import FileChanged, features, fingerprint
    from vibrary.daemon.spectrogram import SpectrogramParams

    clip = write_tone(tmp_path / "kick.wav", 60)
    hashed = fingerprint(str(clip))
    os.link(clip, tmp_path / "backup.wav")
    specs, fresh = features(str(clip), hashed, [SpectrogramParams()], None)
    assert len(specs) == len(fresh) == 1
    time.sleep(0.05)  # past the file system's clock tick
    clip.write_bytes(clip.read_bytes())  # the same bytes written again: a newer mtime
    with pytest.raises(FileChanged):
        features(str(clip), hashed, [SpectrogramParams()], None)


def test_a_file_rewritten_while_it_is_read_with_its_old_mtime_set_back_is_changed(tmp_path: Path) -> None:
    """`rsync --inplace -t`, `cp -p` or a tag editor that keeps the date wrote another sound of the same length
    between the hash and the decoding: the new sound was cached and tagged as the old content's, and every copy
    of that content found by its tags (a hi-hat tagged kick). Its ctime tells."""
    import os
    import time

    from vibrary.daemon.features import FileChanged, features, fingerprint
    from vibrary.daemon.spectrogram import SpectrogramParams

    clip = write_tone(tmp_path / "kick.wav", 60)
    other = write_tone(tmp_path / "hat.wav", 8000)
    assert clip.stat().st_size == other.stat().st_size
    was = clip.stat()
    hashed = fingerprint(str(clip))
    time.sleep(0.05)  # past the file system's clock tick
    with open(clip, "r+b") as f:  # in place: the same inode
        f.write(other.read_bytes())
    os.utime(clip, ns=(was.st_atime_ns, was.st_mtime_ns))
    with pytest.raises(FileChanged):
        features(str(clip), hashed, [SpectrogramParams()], None)


def test_stems_of_one_song_that_open_with_long_silence_are_told_apart(tmp_path: Path) -> None:
    """The hash read the first 4 MiB and the last 64 KiB, but the decoder reads on, past up to a minute of
    silence, to a file's first sound: the stems of one song (one length, silent for their first 25 s) got
    one content id, and all of them the first one's tags, for good."""
    from vibrary.daemon.features import HEAD_BYTES, fingerprint

    sr = 44100
    prints = {}
    cases = (  # (8-bit silence is 0x80; a right channel 1 LSB below 0 is silence to the decoder too)
        ("PCM_16", 25, 40, 0.0),
        ("PCM_U8", 50, 56, 0.0),
        ("PCM_16", 25, 40, -1 / 32768),
    )
    for subtype, silent_s, seconds, offset in cases:
        assert silent_s * sr * 2 * (2 if subtype == "PCM_16" else 1) > HEAD_BYTES  # silence only
        for stem, freq in (("kick", 60.0), ("hat", 8000.0)):
            audio = np.zeros((sr * seconds, 2), np.float32)
            audio[:, 1] = offset
            audio[silent_s * sr : (silent_s + 1) * sr] = tone(freq, 1.0, sr)
            name = f"{stem} stem {subtype} {offset:g}.wav"
            sf.write(tmp_path / name, audio, sr, subtype=subtype)
            prints[name] = fingerprint(str(tmp_path / name)).hash
    assert len(set(prints.values())) == 2 * len(cases)
    again = tmp_path / "kick stem again.wav"
    again.write_bytes((tmp_path / "kick stem PCM_16 0.wav").read_bytes())
    assert fingerprint(str(again)).hash == prints["kick stem PCM_16 0.wav"]  # a copy is still the same content


def test_running_out_of_file_handles_is_a_reason_that_passes(tmp_path: Path) -> None:
    """A daemon at its open-files limit (macOS's default is 256) failed every file it met then, for good;
    such a failure says it passes, and the pipeline keeps the file pending (a real EMFILE here)."""
    path = str(write_tone(tmp_path / "k.wav", 100.0, seconds=0.5))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/dev/fd")) + 16, hard))

        def exhausted() -> None:
            """Every descriptor taken, again just before each call: another test's thread in this worker
            (a gRPC channel closing) may have given one back meanwhile, and the call then opened the file."""
            with pytest.raises(OSError, match="Too many open files"):
                while True:
                    held.append(open(os.devnull, "rb"))  # noqa: SIM115 (closed below)

        exhausted()
        with pytest.raises(TryLater, match="cannot open file: Too many open files"):
            fingerprint(path)
        exhausted()
        with pytest.raises(TryLater):
            decode(path, P)
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fingerprint(path).size > 0 and decode(path, P).shape == (1, P.n_samples)
    with pytest.raises(DecodeError) as e:
        decode(str(tmp_path), P)  # (a folder: a reason that stays, and not one that passes)
    assert not isinstance(e.value, TryLater)


@pytest.mark.parametrize("rate", [1, 400_000_000])
def test_a_header_with_an_implausible_sample_rate_is_refused_before_any_sample_is_read(
    tmp_path: Path, rate: int
) -> None:
    """Its "3 s" is the whole file or more: 2 GB of samples for a 48 MB file, 24 GiB asked for one of 65 kB,
    and confident tags for noise (a 1 Hz header read as bass)."""
    import struct

    path = write_tone(tmp_path / "damaged.wav", 440.0, seconds=1.0)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt " and struct.unpack_from("<I", data, 24)[0] == 44100
    struct.pack_into("<II", data, 24, rate, rate * 2)  # the sample rate and the byte rate that follows from it
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match=f"implausible sample rate in its header: {rate:,} Hz"):
        decode(str(path), P)


def test_a_file_that_fails_to_read_keeps_its_size_and_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure keeps the file as it was seen, so that a rescan knows it unchanged and does not read it
    again: an empty file, and a read error (a bad sector, a share gone), whose failure kept none, were read
    again (and their failures sent anew) at every scan."""
    import errno

    from vibrary.daemon import features
    from vibrary.daemon.decode import changed_at

    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(DecodeError) as e:
        fingerprint(str(empty))
    assert e.value.stamp == (0, changed_at(os.stat(empty)))
    clip = write_tone(tmp_path / "a.wav", 440.0)

    def bad_sector(f: object, size: int) -> memoryview:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(features, "_read_head", bad_sector)
    with pytest.raises(DecodeError, match="cannot read file: Input/output error") as e:
        fingerprint(str(clip))
    assert e.value.stamp == (clip.stat().st_size, changed_at(os.stat(clip))) and not isinstance(e.value, TryLater)

    def share_gone(f: object, size: int) -> memoryview:  # sshfs, SMB: back later, the file unchanged
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    monkeypatch.setattr(features, "_read_head", share_gone)
    with pytest.raises(TryLater):  # (read again a little later, not failed for good)
        fingerprint(str(clip))


def test_damaged_files_say_so_in_a_producers_words(tmp_path: Path) -> None:
    """libsndfile's own words ("Internal error : SF_INFO struct incomplete", "flac decoder lost sync",
    "Supported file format but file is malformed") were all a producer read of a damaged file."""
    import struct

    sound = tone(440.0, 2.0)
    for name in ("a.flac", "a.ogg"):
        sf.write(tmp_path / name, sound, 44100)
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(DecodeError, match=r"^truncated or corrupt"):
            decode(str(tmp_path / f"cut{name}"), SpectrogramParams())
    sf.write(tmp_path / "a.mp3", tone(440.0, 4.0), 44100)
    data = (tmp_path / "a.mp3").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes()
    (tmp_path / "torn.mp3").write_bytes(data[: len(data) // 3] + noise + data[len(data) // 3 + 3000 :])
    with pytest.raises(DecodeError, match=r"^truncated or corrupt \(Unspecified internal error\)"):  # all it said
        decode(str(tmp_path / "torn.mp3"), SpectrogramParams())
    sf.write(tmp_path / "a.wav", sound, 44100, subtype="PCM_16")
    header = bytearray((tmp_path / "a.wav").read_bytes())
    struct.pack_into("<I", header, 24, 0)  # its sample rate
    (tmp_path / "zero.wav").write_bytes(bytes(header))
    with pytest.raises(DecodeError, match=r"^damaged header: no sample rate or channel count"):
        decode(str(tmp_path / "zero.wav"), SpectrogramParams())
    struct.pack_into("<I", header, 24, 44100)
    at = header.index(b"data") + 4
    struct.pack_into("<I", header, at, 0)  # a recorder that stopped before closing it
    (tmp_path / "unclosed.wav").write_bytes(bytes(header))
    (tmp_path / "unclosed_quiet.wav").write_bytes(bytes(header[: at + 4]) + bytes(len(header) - at - 4))  # silent
    for name in ("unclosed.wav", "unclosed_quiet.wav"):  # it said "no audio frames in file"
        with pytest.raises(DecodeError, match="header says it holds no audio, yet the file goes on"):
            decode(str(tmp_path / name), SpectrogramParams())
    empty = bytes(header[: at + 4])
    listed = empty + b"LIST" + struct.pack("<I", 8000) + b"INFO" + bytes(7996)  # and its metadata after it
    listed = listed[:4] + struct.pack("<I", len(listed) - 8) + listed[8:]
    for name, data in (("empty.wav", empty), ("listed.wav", listed)):  # really none: said so
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DecodeError, match="no audio frames in file"):
            decode(str(tmp_path / name), SpectrogramParams())


def test_a_file_whose_mode_changes_as_it_is_read_is_read_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod (or a save) between the hash and the decoding moves the ctime: `vibrary tag` and a dataset's build
    failed the file as changed, where the daemon would read it again a minute later. It is read again at once."""
    from vibrary.daemon import features as features_module

    clip = write_tone(tmp_path / "kick.wav", 60)
    hashes = []
    real = features_module.fingerprint

    def chmod_after_first(path: str) -> features_module.Fingerprint:
        hashes.append(real(path))
        if len(hashes) == 1:
            time.sleep(0.05)  # past the file system's clock tick
            os.chmod(path, 0o640)
        return hashes[-1]

    monkeypatch.setattr(features_module, "fingerprint", chmod_after_first)
    hashed, found, fresh = features_module.read(str(clip), lambda h: [SpectrogramParams()], None)
    assert len(hashes) == 2 and hashed == hashes[1] and len(found) == len(fresh) == 1


@pytest.mark.parametrize("seen_first", [False, True])
def test_a_file_whose_folder_is_renamed_as_it_is_looked_at_is_gone_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen_first: bool
) -> None:
    """A pack's folder renamed as the daemon read it (unzipped, then renamed at once): a file between the
    checks' looks failed for good, as "not a regular file" or "cannot open file", and the move carried that
    to its new name, where it stayed through restarts. Gone from where it was read, it is found where it went."""
    from vibrary.daemon.decode import FileVanished, check_readable

    clip = write_tone(tmp_path / "pack" / "kick.wav", 60)
    is_file = os.path.isfile

    def renamed_meanwhile(path: str) -> bool:
        os.rename(tmp_path / "pack", tmp_path / "Pack Renamed")
        return True if seen_first else is_file(path)  # seen_first: it was a file, and it is gone at the open

    monkeypatch.setattr(os.path, "isfile", renamed_meanwhile)
    with pytest.raises(FileVanished):
        check_readable(str(clip))


def test_a_link_whose_target_goes_as_it_is_looked_at_is_a_broken_link_not_a_file_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link is there, broken: said as the first look says it (its row kept, for its drive to come back)."""
    from vibrary.daemon.decode import BROKEN_LINK, FileVanished, check_readable

    clip = write_tone(tmp_path / "pack" / "kick.wav", 60)
    (tmp_path / "mine").mkdir()
    link = tmp_path / "mine" / "kick.wav"
    link.symlink_to(clip)

    def moved_meanwhile(path: str) -> bool:
        os.rename(tmp_path / "pack", tmp_path / "Pack Renamed")
        return True

    monkeypatch.setattr(os.path, "isfile", moved_meanwhile)
    with pytest.raises(DecodeError, match=BROKEN_LINK) as said:
        check_readable(str(link))
    assert not isinstance(said.value, FileVanished)
