"""Your own tags: datasets that keep their labels and re-pack without decoding, what leaves the machine,
advice on size, the CLI for all of it, and the whole workflow through a real daemon's gRPC API."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from vibrary.clients.client import Client, DaemonError, DaemonNotRunning
from vibrary.daemon import advice, config, dataset, features, shards, suggest, training
from vibrary.daemon.cache import SpectrogramCache
from vibrary.daemon.index import Index
from vibrary.daemon.server import NO_TRAINING
from vibrary.daemon.spectrogram import SpectrogramParams
from vibrary.proto import daemon_pb2 as pb

from tests.conftest import AS_USER, fill_disk, json_lines, start_daemon, vibrary, wait_for
from tests.synth import KINDS, band_model, write_kinds, write_tone

P = SpectrogramParams()
VENDOR = {"thump": "Kicks", "noise": "Hats", "tone": "Synth Leads"}  # folders as a sample pack names them
VENDOR_FILES = {"thump": "BD", "noise": "HH", "tone": "Lead"}
RIGHT = {"thump": "kick", "noise": "hihat", "tone": "synth"}  # what the suggestions should make of them


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file decoded from audio in this process (the real decoder still runs)."""
    seen: list[str] = []
    real = features.decode

    def counting(path: str, params: SpectrogramParams) -> np.ndarray:
        seen.append(path)
        return real(path, params)

    monkeypatch.setattr(features, "decode", counting)
    return seen


def _shard_arrays(home: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    manifest, shard_dir = dataset.load(home, name)
    parts = [
        shards.unpack((shard_dir / f"{s.sha256}.npz").read_bytes(), manifest.params, len(manifest.classes))
        for s in manifest.shards
    ]
    labels = np.concatenate([p[1] for p in parts])
    return np.concatenate([p[0] for p in parts]), labels, [manifest.classes[i] for i in labels]


def test_edits_repack_the_shards_without_decoding_or_reading_audio(
    home: Path, tmp_path: Path, decodes: list[str]
) -> None:
    files = write_kinds(tmp_path / "ex", per_kind=4, seed=3)
    report = dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]), workers=2)
    assert report.per_class == {"noise": 4, "thump": 4, "tone": 4} and len(decodes) == 12
    before = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))

    again = dataset.build(home, "again", [dataset.example(str(f), "x" if "tone" in f.name else "y") for f in files])
    assert again.per_class == {"x": 4, "y": 8} and len(decodes) == 12  # every spectrogram from the home's cache

    for f in files:  # edits need neither the audio nor the files
        f.unlink()
    dataset.edit(home, "mine", rename=[("thump", "kick"), ("noise", "hat")])
    dataset.edit(home, "mine", rename=[("hat", "kick")])  # onto an existing tag: a merge
    chained = dataset.edit(home, "mine", rename=[("tone", "pad"), ("pad", "Lead  Synth")])  # each sees the one before
    assert chained.per_class == {"kick": 8, "lead synth": 4}  # as a folder `Lead Synth/` spells it (not lead-synth)
    dataset.edit(home, "mine", rename=[("lead-synth", "tone")])
    moved, dropped = [f for f in files if f.name.startswith("noise")][:2]  # now kicks, one at a time
    edited = dataset.edit(home, "mine", relabel=[(str(moved), "tone"), (str(dropped), "")])
    assert edited.per_class == {"kick": 6, "tone": 5} and edited.manifest.classes == ["kick", "tone"]
    assert len(decodes) == 12

    codes, _, labels = _shard_arrays(home, "mine")
    after = dataset.labelled_files(home, "mine")
    assert [label for _, label in after] == labels  # labels.json and the shards agree row by row
    for (path, tag), code in zip(after, codes, strict=True):
        old = next(c for (p, t), c in before.items() if p == path)
        assert np.array_equal(code, old)  # the same spectrogram, only its label changed
        assert tag == ("tone" if "tone" in Path(path).name or path == str(moved) else "kick")
    shard_files = sorted(p.stem for p in (dataset.dataset_dir(home, "mine") / "shards").glob("*.npz"))
    assert shard_files == sorted(s.sha256 for s in edited.manifest.shards)  # stale shards are gone


def test_silent_files_are_no_examples_and_say_why(home: Path, tmp_path: Path) -> None:
    """A stem that starts after a minute, a rendered silence: the tagger knows such a file has no sound in
    it, yet a dataset took it as an example of its folder's tag, and the model learned silence as that tag."""
    write_kinds(tmp_path / "ex", per_kind=3, seed=5)
    sf.write(tmp_path / "ex" / "tone" / "silence.wav", np.zeros(44100, np.float32), 44100)
    sf.write(tmp_path / "ex" / "noise" / "hum.wav", np.full(44100, 1e-5, np.float32), 44100)  # -100 dBFS
    report = dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]), workers=1)
    assert report.per_class == {"noise": 3, "thump": 3, "tone": 3}
    failed = dict(report.failed)
    assert failed[str(tmp_path / "ex" / "tone" / "silence.wav")].startswith("silent: no sound above -70 dBFS")
    assert str(tmp_path / "ex" / "noise" / "hum.wav") in failed


def test_the_same_sound_twice_is_one_example(home: Path, tmp_path: Path) -> None:
    """A pack copied to another drive and added again was in the dataset twice (the same clip on both sides
    of the validation split); a copy filed under two tags taught the model two answers for one sound."""
    files = write_kinds(tmp_path / "ex", per_kind=3, seed=8)
    kept = next(f for f in files if f.parent.name == "noise")
    shutil.copy(kept, tmp_path / "ex" / "tone" / "noise-copy.wav")
    report = dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]), workers=1)
    assert report.per_class == {"noise": 3, "thump": 3, "tone": 3}  # the first met (in order of path) stays
    copy = str(tmp_path / "ex" / "tone" / "noise-copy.wav")
    assert dict(report.failed) == {copy: f"the same sound as {kept}, tagged noise"}
    shutil.copytree(tmp_path / "ex", tmp_path / "drive" / "ex")
    again = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "drive" / "ex")]), workers=1)
    assert again.added == 0 and again.report.per_class == {"noise": 3, "thump": 3, "tone": 3}
    copied = dict(again.unread)
    assert copied[str(tmp_path / "drive" / "ex" / "noise" / kept.name)] == f"the same sound as {kept}"
    kept.unlink()  # (its first place emptied: the dataset recorded what it sounds like, and reads nothing)
    last = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "drive" / "ex")]), workers=1)
    assert last.added == 0 and str(tmp_path / "drive" / "ex" / "noise" / kept.name) in dict(last.unread)


def test_the_same_audio_in_another_format_is_one_example(home: Path, tmp_path: Path) -> None:
    """A pack shipped as WAV and as AIFF (or FLAC) was every clip twice: other bytes, the same sound."""
    files = write_kinds(tmp_path / "ex", per_kind=3, seed=8)
    kept = next(f for f in files if f.parent.name == "thump")
    audio, rate = sf.read(kept, dtype="int16")
    aiff = kept.with_suffix(".aiff")
    sf.write(aiff, audio, rate, subtype="PCM_16")  # lossless: the same samples
    report = dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]), workers=1)
    assert report.per_class == {"noise": 3, "thump": 3, "tone": 3}
    first, second = sorted([str(kept), str(aiff)])  # the first met (in order of path) stays
    assert dict(report.failed) == {second: f"the same sound as {first}"}
    flac = tmp_path / "more" / "thump" / f"{kept.stem}.flac"  # added later: the dataset knows it too
    flac.parent.mkdir(parents=True)
    sf.write(flac, audio, rate, subtype="PCM_16")
    added = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "more")]), workers=1)
    assert added.added == 0 and dict(added.unread) == {str(flac): f"the same sound as {first}"}


def test_a_tag_folder_names_its_tag_as_written_but_for_case_unless_spelled_several_ways(tmp_path: Path) -> None:
    """The contract's label is the folder's name: `pitch_shift/` was the tag pitch-shift and `Lead  Synth/` lead-synth,
    so a script that scored `tag`'s output against its folder names scored 0 on them. Kept as written (case aside,
    as tags are searched), but where it could not be searched for; one tag spelled by several folders (`Hi Hat/`,
    `hi-hat/`) is one tag, as suggestions spell it."""
    names = [
        "pitch_shift",
        "Lead  Synth",
        "KICK",
        "kick",
        "Hi Hat",
        "hi-hat",
        "(misc)",
        "rock'n'roll",
        "-x",
        "Not Used",
    ]
    for i, name in enumerate(names):
        (tmp_path / "ex" / name).mkdir(parents=True)
        (tmp_path / "ex" / name / f"{i}.wav").write_bytes(b"")
    spread: list[str] = []
    labels = {e.path: e.label for e in dataset.examples_from_folders([str(tmp_path / "ex")], spread=spread)}
    assert [labels[str(tmp_path / "ex" / name / f"{i}.wav")] for i, name in enumerate(names)] == [
        "pitch_shift",
        "lead synth",
        "kick",
        "kick",
        "hi-hat",
        "hi-hat",
        "misc",
        "rock'n'roll",
        "x",
        "not-used",  # read by a search as NOT used
    ]
    assert sorted(spread) == ["hi-hat: under Hi Hat/, hi-hat/", "kick: under KICK/, kick/"]
    loose: list[str] = []  # given with one of its tag folders too: that folder's files are not loose
    dataset.examples_from_folders([str(tmp_path / "ex"), str(tmp_path / "ex" / "kick")], loose)
    assert loose == []


def test_tags_by_the_folders_right_under_the_one_given(home: Path, tmp_path: Path) -> None:
    """Packs dropped into each tag folder (`punchy/kicks/`, `soft/kicks/`): their own folders named the tags,
    punchy and soft were gone without a word. Said, and `--labels top` keeps them."""
    for mood in ("punchy", "soft"):
        write_kinds(tmp_path / "ex" / mood, per_kind=2, seed=len(mood))
    spread: list[str] = []
    nearest = dataset.examples_from_folders([str(tmp_path / "ex")], spread=spread)
    assert {e.label for e in nearest} == {"noise", "thump", "tone"}
    assert spread == [f"{kind}: under punchy/, soft/" for kind in ("noise", "thump", "tone")]
    spread.clear()  # two packs given, each with its tags once (`A/FX/Chorus/`, `B/Guitar FX/Chorus/`): no spread
    write_kinds(tmp_path / "packA" / "FX", per_kind=1, seed=6)
    write_kinds(tmp_path / "packB" / "Guitar FX", per_kind=1, seed=7)
    dataset.examples_from_folders([str(tmp_path / "packA"), str(tmp_path / "packB")], spread=spread)
    assert spread == []
    top = dataset.examples_from_folders([str(tmp_path / "ex")], top=True, spread=spread)
    assert sorted(e.label for e in top) == ["punchy"] * 6 + ["soft"] * 6
    said = vibrary("dataset", "create", "moods", str(tmp_path / "ex"), "--json", home=home, check=False)
    assert (
        "if the folders right under it are your tags, give --labels top" in said.stderr
        and "tone: under punchy/, soft/" in said.stderr
    )
    # a pack dropped into the tag folder of its sound, beside that tag's own files: a tag of its own, silently
    write_kinds(tmp_path / "mine", per_kind=2, seed=3, folders={"thump": "kick", "noise": "Drums", "tone": "pads"})
    write_kinds(tmp_path / "mine" / "kick", per_kind=1, seed=4, folders={k: "Vengeance Kicks Vol 2" for k in KINDS})
    write_kinds(tmp_path / "mine" / "Drums", per_kind=1, seed=5, folders={k: "snare" for k in KINDS})  # its own kind
    spread.clear()
    dataset.examples_from_folders([str(tmp_path / "mine")], spread=spread)
    assert spread == ["vengeance kicks vol 2: inside kick/, a tag folder of that sound"]
    write_kinds(tmp_path / "mine" / "pads", per_kind=1, seed=6, folders={k: "more" for k in KINDS})  # no sound
    spread.clear()
    dataset.examples_from_folders([str(tmp_path / "mine")], spread=spread)
    assert spread == [
        "vengeance kicks vol 2: inside kick/, a tag folder of that sound",
        "more: inside pads/, a tag folder",
    ]


def test_a_relabel_of_a_file_left_out_says_why_it_was(home: Path, tmp_path: Path) -> None:
    """A copy left out as the same sound as another was "not in dataset: `vibrary dataset add` it first", and
    adding it left it out again."""
    write_kinds(tmp_path / "ex", per_kind=2, seed=4)
    first = sorted((tmp_path / "ex" / "thump").glob("*"))[0]
    copy = tmp_path / "ex" / "tone" / "copy.wav"
    shutil.copy(first, copy)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    said = f"it was left out, the same sound as {first}, tagged thump; relabel that file instead"
    with pytest.raises(ValueError, match=re.escape(f"{copy} is not in dataset 'mine': {said}")):
        dataset.edit(home, "mine", relabel=[(str(copy), "noise")])
    (tmp_path / "ex" / "tone" / "broken.wav").write_text("not audio")  # unreadable: added again once it is fixed
    dataset.build(home, "other", dataset.examples_from_folders([str(tmp_path / "ex")]))
    (tmp_path / "link").symlink_to(tmp_path / "ex")  # (given through a link to its folder)
    said = "it was left out, not a recognised audio format .*; `vibrary dataset add other` its folder again once"
    with pytest.raises(ValueError, match=rf"broken\.wav is not in dataset 'other': {said}"):
        dataset.edit(home, "other", relabel=[(str(tmp_path / "link" / "tone" / "broken.wav"), "noise")])


def test_bad_edits_are_refused_and_leave_the_dataset_as_it_was(home: Path, tmp_path: Path, decodes: list[str]) -> None:
    write_kinds(tmp_path / "ex", per_kind=2, seed=4)
    with pytest.raises(ValueError, match="all 2 files are tagged 'noise'; a model needs at least 2 tags"):
        dataset.build(home, "mine", [dataset.example(str(f), "noise") for f in (tmp_path / "ex").glob("noise/*")])
    assert decodes == [] and dataset.names(home) == []  # refused before any file was decoded
    gone = [dataset.example(str(tmp_path / f"gone_{tag}.wav"), tag) for tag in ("a", "b")]
    with pytest.raises(ValueError, match=r"is empty: 2 of its files were left out, such as .*gone_a\.wav"):
        dataset.build(home, "mine", gone)  # "is empty" alone said nothing of why
    dataset.build(home, "other", [*dataset.examples_from_folders([str(tmp_path / "ex")]), *gone])
    with pytest.raises(ValueError, match="at least 2") as refused:
        dataset.edit(home, "other", drop=["noise", "thump"])
    assert "left out" not in str(refused.value)  # the build's old failures are not why an edit is refused
    dataset.delete(home, "other")
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    manifest_before = (dataset.dataset_dir(home, "mine") / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"no tag 'snare'.*noise, thump, tone"):
        dataset.edit(home, "mine", rename=[("snare", "kick")])
    # `add` takes folders of tag folders: the file's own folder was refused as files lying loose in it
    said = "not in dataset 'mine': `vibrary dataset add mine DIR` adds it, DIR the folder of tag folders it is in"
    said += f" (here {tmp_path.parent}); then relabel it"
    with pytest.raises(ValueError, match=re.escape(said)):
        dataset.edit(home, "mine", relabel=[(str(tmp_path / "elsewhere.wav"), "kick")])
    with pytest.raises(ValueError, match="empty tag"):  # a blank tag dropped the file, unsaid ('' drops it)
        dataset.edit(home, "mine", relabel=[(str(next((tmp_path / "ex").rglob("*.wav"))), "  ")])
    (tmp_path / "link").symlink_to(tmp_path / "ex")  # its file given through a link: the file, not "not in"
    one = next(p for p, tag in dataset.labelled_files(home, "mine") if tag == "tone")
    linked = tmp_path / "link" / Path(one).relative_to(tmp_path / "ex")
    relabelled = dataset.edit(home, "mine", relabel=[(str(linked), "noise")])
    assert dict(dataset.labelled_files(home, "mine"))[one] == "noise" and relabelled.per_class
    dataset.edit(home, "mine", relabel=[(one, "tone")])
    dataset.edit(home, "mine", relabel=[(one, "")])  # dropped: brought back by a restoring add of its folder's folder
    said = "an edit removed it; `vibrary dataset add --restore mine DIR` brings it back, with every file and tag an"
    said += f" edit removed under DIR, DIR the folder of tag folders it is in (here {tmp_path / 'ex'})"
    with pytest.raises(ValueError, match=re.escape(said)):
        dataset.edit(home, "mine", relabel=[(one, "noise")])
    dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]), restore=True)
    assert dict(dataset.labelled_files(home, "mine"))[one] == "tone"
    manifest_before = (dataset.dataset_dir(home, "mine") / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"^not done: dataset 'mine' would be left with only tone; .* at least 2"):
        dataset.edit(home, "mine", drop=["noise", "thump"])  # it said "has 1 class", as of an edit made
    with pytest.raises(ValueError, match="empty tag"):
        dataset.edit(home, "mine", rename=[("noise", "  ")])
    with pytest.raises(ValueError, match="of 1048576 characters: 255 at most"):  # every listing carried it
        dataset.edit(home, "mine", rename=[("noise", "x" * (1 << 20))])
    assert dataset._as_held("x" * 300, {"x" * 300, "noise"}) == "x" * 300  # one held from before: it can go
    for same in ("Noise", "NOISE", "noise"):  # the same tag as spelled here (kick → kicks too): a silent no-op
        with pytest.raises(ValueError, match=f"'{same}' is 'noise' as this dataset spells it: nothing to rename"):
            dataset.edit(home, "mine", rename=[("NOISE", same)])
    with pytest.raises(ValueError, match="at least 2"):  # a merge that names its target is no "nothing to rename"
        dataset.edit(home, "mine", rename=[("Thump", "Thump"), ("tone", "Thump"), ("noise", "Thump")])
    # spelled as suggestions spell tags: a space or a | could never be searched for
    assert [dataset.label(t) for t in ("Claps & Snaps", "snare|rim", " Lead  Synth")] == [
        "claps-snaps",
        "snare-rim",
        "lead-synth",
    ]
    then = r"no tag 'noise' in dataset 'mine' once the edits before this one are made \(nothing was changed\)"
    with pytest.raises(ValueError, match=then + r"; its tags then: hiss, thump, tone"):  # renamed away by then
        dataset.edit(home, "mine", rename=[("noise", "hiss")], drop=["noise"])
    assert (dataset.dataset_dir(home, "mine") / "manifest.json").read_text() == manifest_before
    with pytest.raises(FileNotFoundError, match="no dataset 'other'"):
        dataset.edit(home, "other", drop=["noise"])
    a_file = str(next((tmp_path / "ex").rglob("*.wav")))
    with pytest.raises(ValueError, match="is not a folder"):
        dataset.examples_from_folders([a_file])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        dataset.examples_from_folders([str(tmp_path / "absent")])
    # not "no audio files found"; and most often the folder given is one tag's own: the one above is the answer
    loose = f"the 2 audio files lie loose in .*give the folder above it \\(here {tmp_path / 'ex'}\\)"
    with pytest.raises(ValueError, match=loose):
        dataset.examples_from_folders([str(Path(a_file).parent)])
    edited = dataset.edit(home, "mine", drop=["noise", "Noise"])  # one tag named twice is dropped once
    assert sorted(edited.per_class) == ["thump", "tone"]


def test_adding_files_decodes_only_them_keeps_the_edits_and_follows_renames(
    home: Path, tmp_path: Path, decodes: list[str]
) -> None:
    first = write_kinds(tmp_path / "first", per_kind=3, seed=5)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "first")]))
    dataset.edit(home, "mine", rename=[("thump", "Kick")])
    moved, removed = [f for f in first if f.name.startswith("tone")][:2]
    dataset.edit(home, "mine", relabel=[(str(moved), "noise"), (str(removed), "")])
    before = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))
    assert len(decodes) == 9

    second = write_kinds(tmp_path / "second", per_kind=2, seed=6)  # folders thump/, noise/, tone/ again
    (tmp_path / "second" / "tone" / "broken.wav").write_text("not audio")
    examples = dataset.examples_from_folders([str(tmp_path / "first"), str(tmp_path / "second")])
    with pytest.raises(FileNotFoundError, match="no dataset 'other'"):
        dataset.add(home, "other", examples)
    grown = dataset.add(home, "mine", examples)  # the first folders again, and the second
    assert (grown.added, grown.left_out) == (6, 1) and len(decodes) == 9 + 7  # the new files only
    assert grown.report.per_class == {"kick": 5, "noise": 6, "tone": 3}  # thump/ joined what it was renamed to
    assert [Path(p).name for p, _ in grown.report.failed] == ["broken.wav"]
    after = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))
    for row, code in before.items():  # the edited rows as they were (the relabel stands), spectrograms untouched
        assert np.array_equal(after[row], code)
    assert {p for p, _ in after} - {p for p, _ in before} == {str(f) for f in second}

    again = dataset.add(home, "mine", examples)  # only the unreadable file is tried again
    assert (again.added, again.left_out) == (0, 1) and len(decodes) == 17
    (tmp_path / "second" / "tone" / "broken.wav").unlink()
    unchanged = (dataset.dataset_dir(home, "mine") / "labels.json").read_text()
    nothing = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "second")]))
    assert (nothing.added, nothing.left_out) == (0, 0) and nothing.report.per_class == grown.report.per_class
    assert (dataset.dataset_dir(home, "mine") / "labels.json").read_text() == unchanged  # not even rewritten

    dataset.edit(home, "mine", drop=["tone"])  # a dropped tag stays out too
    write_kinds(tmp_path / "third", per_kind=1, seed=7)
    grown = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "third")]))
    assert (grown.added, grown.left_out) == (2, 1) and grown.report.per_class == {"kick": 6, "noise": 7}

    kicks = [p for p, tag in dataset.labelled_files(home, "mine") if tag == "kick"]
    dataset.edit(home, "mine", relabel=[(p, "boom") for p in kicks])  # kick emptied by relabels: not dropped
    fourth = write_kinds(tmp_path / "fourth", per_kind=1, seed=8)
    steps: list[int] = []
    grown = dataset.add(
        home,
        "mine",
        dataset.examples_from_folders([str(tmp_path / "first"), str(tmp_path / "fourth")]),
        progress=steps.append,
    )
    assert grown.report.per_class == {"boom": 6, "kick": 1, "noise": 8}  # thump/ joins what it was renamed to
    assert sum(steps) == 9 + len(fourth)  # every file offered is accounted for: the bar ends full

    # a dropped tag and a removed file came back only with a dataset made anew, every other edit lost
    restored = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "first")]), restore=True)
    assert (restored.added, restored.left_out) == (2, 0) and restored.report.per_class["tone"] == 2
    assert restored.report.per_class["boom"] == 6  # the other edits stand
    later = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "third")]))
    assert (later.added, later.left_out) == (1, 0)  # the drop no longer holds for tone: its file from third/ joins


def test_a_restore_brings_a_dropped_tag_back_under_the_name_an_edit_gave_it(home: Path, tmp_path: Path) -> None:
    """`dark` renamed `moody` and then dropped came back as `dark` with `add --restore`, and a merge dropped
    after it came back as the two tags merged (a producer's walkthrough): the edits before the drop stand."""
    write_kinds(tmp_path / "first", per_kind=2, seed=5)
    write_kinds(tmp_path / "more", per_kind=1, seed=6, folders={"thump": "Big Thump", "noise": "Hiss", "tone": "y"})
    shutil.rmtree(tmp_path / "more" / "y")
    folders = [str(tmp_path / "first"), str(tmp_path / "more")]
    dataset.build(home, "mine", dataset.examples_from_folders(folders))
    dataset.edit(home, "mine", rename=[("tone", "moody")])
    dataset.edit(home, "mine", rename=[("Big Thump", "thump")])  # a merge
    dataset.edit(home, "mine", drop=["moody"])
    dataset.edit(home, "mine", drop=["thump"])
    kept = dataset.add(home, "mine", dataset.examples_from_folders(folders))  # dropped: they stay out
    assert (kept.added, kept.left_out, kept.report.per_class) == (0, 5, {"hiss": 1, "noise": 2})
    restored = dataset.add(home, "mine", dataset.examples_from_folders(folders), restore=True)
    assert restored.report.per_class == {"hiss": 1, "moody": 2, "noise": 2, "thump": 3}
    write_kinds(tmp_path / "later", per_kind=1, seed=7)  # the drops no longer hold; the rename still does
    later = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "later")]))
    assert later.report.per_class == {"hiss": 1, "moody": 3, "noise": 3, "thump": 4}
    dataset.edit(home, "mine", drop=["moody"])  # tone's files dropped as moody; then another sound named moody
    dataset.edit(home, "mine", rename=[("hiss", "moody")])
    write_kinds(tmp_path / "last", per_kind=1, seed=8)
    last = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "last")]))
    assert last.report.per_class == {"moody": 1, "noise": 4, "thump": 5}  # tone/ stays out: not hiss's sound


def test_a_rename_and_a_drop_in_one_edit_are_kept_as_two_edits_would_be(home: Path, tmp_path: Path) -> None:
    """`edit(rename=[(tone, moody)], drop=[moody])` stored tone as dropped, so `add --restore` brought it back as
    tone, where the same edit in two calls brings it back as moody."""
    write_kinds(tmp_path / "first", per_kind=2, seed=5)
    folders = [str(tmp_path / "first")]
    dataset.build(home, "mine", dataset.examples_from_folders(folders))
    dataset.edit(home, "mine", rename=[("tone", "moody")], drop=["moody"])
    kept = dataset.add(home, "mine", dataset.examples_from_folders(folders))
    assert (kept.added, kept.left_out, kept.report.per_class) == (0, 2, {"noise": 2, "thump": 2})
    restored = dataset.add(home, "mine", dataset.examples_from_folders(folders), restore=True)
    assert restored.report.per_class == {"moody": 2, "noise": 2, "thump": 2}


def test_a_second_packs_folders_join_the_tags_they_spell_another_way(home: Path, tmp_path: Path) -> None:
    """`dataset add` of a second pack made `kicks` a class beside `kick` (and `hihat` beside `hats`), which
    every edit reads as one tag; the files join the tag the dataset has. A kind of it (`Open Hat/`) does not."""
    write_kinds(tmp_path / "first", per_kind=2, seed=5, folders={"thump": "Kick", "noise": "Hats", "tone": "Pads"})
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "first")]))
    folders = {"thump": "Kicks", "noise": "Hi Hats", "tone": "Pad"}
    write_kinds(tmp_path / "second", per_kind=1, seed=6, folders=folders)
    write_kinds(tmp_path / "third", per_kind=1, seed=7, folders={"thump": "Bass", "noise": "Claps", "tone": "Open Hat"})
    grown = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "second")]))
    assert grown.report.per_class == {"hats": 3, "kick": 3, "pads": 3}
    grown = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "third")]))  # new sounds: new tags
    assert grown.report.per_class == {"bass": 1, "claps": 1, "hats": 3, "kick": 3, "open hat": 1, "pads": 3}
    # a tag of two words held as its folder spells it (`Open Hat/`) is no one-word tag that `Hi Hats/` joins
    write_kinds(tmp_path / "open", per_kind=2, seed=8, folders={"thump": "Kick", "noise": "Open Hat", "tone": "Pads"})
    dataset.build(home, "open", dataset.examples_from_folders([str(tmp_path / "open")]))
    grown = dataset.add(home, "open", dataset.examples_from_folders([str(tmp_path / "second")]))
    assert grown.report.per_class == {"hi hats": 1, "kick": 3, "open hat": 2, "pads": 3}


def test_an_edit_holds_for_a_folder_that_spells_its_tag_another_way(home: Path, tmp_path: Path) -> None:
    """Edits are kept by the tag's spelling then (lead-synth, as folders were spelled before; or another
    folder's): a second pack's `lead-synth/` came back as a tag after `lead synth` was dropped, and one renamed
    became a tag beside its new name."""
    write_kinds(tmp_path / "a", per_kind=2, seed=5, folders={"thump": "Kick", "noise": "Lead Synth", "tone": "Pads"})
    write_kinds(tmp_path / "b", per_kind=1, seed=6, folders={"thump": "Kick", "noise": "lead-synth", "tone": "Pads"})
    for edit, per_class in (
        ({"drop": ["lead synth"]}, {"kick": 3, "pads": 3}),
        ({"rename": [("Lead Synth", "lead")]}, {"kick": 3, "lead": 3, "pads": 3}),
    ):
        dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "a")]), replace=True)
        dataset.edit(home, "mine", **edit)
        grown = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "b")]))
        assert grown.report.per_class == per_class, edit


def test_tag_folders_linked_to_a_packs_folders_are_followed_once(home: Path, tmp_path: Path) -> None:
    """`MyTags/kick` linked to a pack's `Kicks/` (examples gathered without copying them) was skipped without
    a word: a dataset of the other tags only. A link loop is walked once."""
    pack = write_kinds(
        tmp_path / "Pack", per_kind=2, seed=5, folders={"thump": "Kicks", "noise": "Hats", "tone": "Keys"}
    )
    tags = tmp_path / "MyTags"
    tags.mkdir()
    (tags / "kick").symlink_to(tmp_path / "Pack" / "Kicks")
    (tags / "hat").symlink_to(tmp_path / "Pack" / "Hats")
    (tmp_path / "Pack" / "Hats" / "loop").symlink_to(tags)  # a loop: MyTags/hat/loop/hat/loop/…
    found = dataset.examples_from_folders([str(tags)])
    assert sorted((Path(e.path).name, e.label) for e in found) == sorted(
        (f.name, "kick" if "Kicks" in str(f) else "hat") for f in pack if "Keys" not in str(f)
    )
    suggested = {Path(s.path).parent.name: s.tag for s in suggest.suggest([str(tags)], suggest.Synonyms.load(None))}
    assert suggested == {"kick": "kick", "hat": "hihat"}


def test_a_file_given_twice_is_built_once_and_the_progress_ends_full(home: Path, tmp_path: Path) -> None:
    """A folder given twice (or through a link beside it): each file is built once, and the progress stopped
    at half."""
    write_kinds(tmp_path / "lib", per_kind=2, seed=3)
    steps: list[int] = []
    examples = dataset.examples_from_folders([str(tmp_path / "lib"), str(tmp_path / "lib")])
    report = dataset.build(home, "mine", examples, progress=steps.append)
    assert report.manifest.clips == 6 < len(examples) == sum(steps)


def test_a_sample_rewritten_in_place_is_read_again_when_its_folder_is_added(home: Path, tmp_path: Path) -> None:
    """`add` skipped every path the dataset held: a kick bounced again under its name kept its old sound in the
    dataset, and the model trained on it. A bounce that cannot be read (silent, half written) keeps the clip
    before it, and its tag: it left the dataset, and came back under its folder's tag."""
    files = write_kinds(tmp_path / "ex", per_kind=2, seed=5)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    dataset.edit(home, "mine", relabel=[(str(files[0]), "noise")])  # an edit of it stands
    before = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))
    rewritten = files[0]
    sf.write(rewritten, np.zeros(4410, np.float32), 44100)  # bounced silent
    failed = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    assert failed.added == 0 and [p for p, _ in failed.unread] == [str(rewritten)]
    kept = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))
    assert kept.keys() == before.keys() and all(np.array_equal(before[r], kept[r]) for r in before)
    assert dataset.load_report(home, "mine").failed == []
    write_tone(rewritten, 3000.0, 0.4)  # another sound, under the same name
    grown = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    after = dict(zip(dataset.labelled_files(home, "mine"), _shard_arrays(home, "mine")[0], strict=True))
    assert grown.added == 1 and grown.report.per_class == dataset.load_report(home, "mine").per_class
    assert set(after) == set(before)  # the same files, the relabel kept
    changed = [row for row in before if not np.array_equal(before[row], after[row])]
    assert changed == [(str(rewritten), "noise")]
    again = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    assert again.added == 0  # read once: as it is now
    shutil.copyfile(files[1], rewritten)  # now a copy of another file: no sound of its own to keep, left out
    copied = dataset.add(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    assert [p for p, why in copied.report.failed if why.startswith(dataset.SAME_SOUND)] == [str(rewritten)]
    assert str(rewritten) not in {p for p, _ in dataset.labelled_files(home, "mine")}


def test_an_add_whose_new_files_cannot_be_read_says_so(home: Path, tmp_path: Path) -> None:
    """It said "nothing to add: mine has these files already" of a new file it could not read."""
    tags = tmp_path / "MyTags"
    write_kinds(tags, per_kind=2, seed=11)
    vibrary("dataset", "create", "mine", str(tags), home=home)
    (tags / "thump" / "new.wav").write_text("not audio")
    added = vibrary("dataset", "add", "mine", str(tags), home=home)
    assert "nothing added: 1 new file left out (1 unreadable)" in added.stderr, added.stderr
    assert "has these files already" not in added.stderr and f"skipped {tags / 'thump' / 'new.wav'}" in added.stderr
    shown = vibrary("dataset", "show", "mine", "--json", home=home)  # the dataset as it was: nothing left out
    assert "new.wav" not in shown.stderr and json.loads(shown.stdout)["failed"] == 0, shown
    (tags / "thump" / "new.wav").unlink()
    for n in range(7):  # read fine: copies, a few said, then what it comes to (it came first, lost above 30 lines)
        shutil.copy(next((tags / "thump").glob("thump*.wav")), tags / "thump" / f"copy{n}.wav")
    added = vibrary("dataset", "add", "mine", str(tags), home=home)
    lines = added.stderr.splitlines()
    assert lines[-1] == "vibrary: nothing added: 7 new files left out (7 the same sound as another)", lines
    assert sum(line.startswith("skipped ") for line in lines) == 5 and "  … and 2 more" in lines, lines


def test_files_lying_in_a_folder_given_beside_its_tag_folders_are_said_to_be_left_out(
    home: Path, tmp_path: Path
) -> None:
    """`MyTags/dark/Organ.wav` beside `MyTags/dark/Bass Loops/`: `dataset add mine MyTags/dark` said
    "has these files already" of the new file in dark/ and added nothing; `create` dropped it silently."""
    tags = tmp_path / "MyTags"
    write_kinds(tags, per_kind=2, seed=11)
    write_kinds(tags / "thump", per_kind=1, seed=12, folders={k: "Deep" for k in KINDS})
    (tags / "bell").mkdir()  # a tag meant, its files not there yet: the dataset went without it unsaid
    (tags / "bell" / "notes.txt").write_text("to do")
    (tags / "locked").mkdir(mode=0)  # cannot be read: said so, and not said empty
    created = vibrary("dataset", "create", "--json", "mine", str(tags), home=home)
    (tags / "locked").chmod(0o755)
    assert json_lines(created.stdout)[-1]["per_class"] == {"deep": 3, "noise": 2, "thump": 2, "tone": 2}
    assert "lying directly" not in created.stderr  # no file lies loose in MyTags itself
    assert f"no audio files in these folders, so no tag from them:\n  {tags / 'bell'}/\n" in created.stderr
    assert f"{tags / 'locked'}/" not in created.stderr and f"cannot read folder {tags / 'locked'}" in created.stderr
    new = tags / "thump" / "new_thump.wav"
    new.write_bytes((tags / "thump" / "thump_11_0.wav").read_bytes())
    added = vibrary("dataset", "add", "--json", "mine", str(tags / "thump"), home=home)
    assert json_lines(added.stdout)[-1]["added"] == 0
    assert "left out 1 file lying directly in a folder given" in added.stderr and str(new) in added.stderr
    assert "thump_11_0.wav" not in added.stderr  # in the dataset already: not left out of it
    again = vibrary("dataset", "create", "mine", str(tags / "thump"), home=home, check=False)
    assert again.returncode == 1 and "dataset 'mine' exists (9 clips, and any edits made to it)" in again.stderr
    assert "--replace builds it anew" in again.stderr and "lying directly" not in again.stderr  # (nothing looked at)
    again = vibrary("dataset", "create", "mine", str(tags / "thump"), "--replace", home=home, check=False)
    assert "left out 3 files lying directly" in again.stderr


def test_folders_whose_names_are_not_utf8_are_left_out_of_a_dataset_and_said(home: Path, tmp_path: Path) -> None:
    """One vendor folder unzipped from an old archive (`Caf\xe9 Kicks`) stopped the whole `dataset create`:
    "… is not valid UTF-8: rename it". Such a folder cannot name a tag (a model's classes are UTF-8), but the
    rest of the dataset is built."""
    tags = tmp_path / "MyTags"
    write_kinds(tags, per_kind=2, seed=21)
    write_kinds(tmp_path / "pack", per_kind=1, seed=22, folders={k: "" for k in KINDS})
    os.rename(tmp_path / "pack", os.fsencode(tags / "thump") + b"/Caf\xe9 Kicks")  # a pack inside a tag folder
    write_kinds(tmp_path / "odd", per_kind=1, seed=23, folders={k: "" for k in KINDS})
    os.rename(tmp_path / "odd", os.fsencode(tags) + b"/dr\xfcm")
    for labels, expected in (
        ("top", {"noise": 2, "thump": 5, "tone": 2}),
        ("folders", {"noise": 2, "thump": 2, "tone": 2}),
    ):
        made = vibrary("dataset", "create", "--json", "mine", str(tags), "--labels", labels, "--replace", home=home)
        assert json_lines(made.stdout)[-1]["per_class"] == expected, made.stderr
        assert f"cannot read folder {tags}/dr\\xfcm (its name is not valid UTF-8" in made.stderr
        said = f"cannot read folder {tags}/thump/Caf\\xe9 Kicks (its name is not valid UTF-8"
        assert (said in made.stderr) == (labels == "folders"), made.stderr  # with top, the pack is thump's


def test_a_cache_on_a_full_disk_costs_a_dataset_build_nothing(tmp_path: Path) -> None:
    """The spectrogram cache only saves decoding later; a write to it that failed (a full disk) stopped the
    whole `dataset add` with "database or disk is full"."""
    drive = tmp_path / "drive"
    drive.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(drive)], capture_output=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        cache = SpectrogramCache(drive / "spectrograms.sqlite", 1 << 30)
        fill_disk(drive / "filler")
        write_kinds(tmp_path / "ex", per_kind=3, seed=31)
        examples = dataset.examples_from_folders([str(tmp_path / "ex")])
        report = dataset.build(tmp_path / "home", "mine", examples, cache=cache)
        assert sum(report.per_class.values()) == len(examples) and not report.failed
    finally:
        subprocess.run(["umount", "--lazy", str(drive)], check=True)  # (the build's threads' connections close late)


def test_dataset_add_names_only_the_files_it_could_not_read(home: Path, tmp_path: Path) -> None:
    """`dataset add mine DIR` said "skipped" of every file any earlier build of mine could not read, ones
    outside DIR too, as if this add had failed on them."""
    write_kinds(tmp_path / "first", per_kind=2, seed=15)
    old = tmp_path / "first" / "tone" / "old.wav"
    old.write_bytes(b"RIFF not audio")
    assert f"skipped {old}: " in vibrary("dataset", "create", "mine", str(tmp_path / "first"), home=home).stderr
    write_kinds(tmp_path / "second", per_kind=1, seed=16)
    new = tmp_path / "second" / "tone" / "new.wav"
    new.write_bytes(b"RIFF not audio either")
    (tmp_path / "second" / "noise" / "again.wav").write_bytes(
        (tmp_path / "first" / "noise" / "noise_15_0.wav").read_bytes()
    )
    added = vibrary("dataset", "add", "--json", "mine", str(tmp_path / "second"), home=home)
    assert json_lines(added.stdout)[-1]["added"] == 3 and json_lines(added.stdout)[-1]["failed"] == 3
    assert f"skipped {new}: " in added.stderr and str(old) not in added.stderr, added.stderr
    not_added = {Path(f["path"]).name: f["error"] for f in json_lines(added.stdout)[-1]["not_added"]}
    assert not_added.keys() == {"new.wav", "again.wav"}  # this add's alone (left_out_files: old.wav too)
    assert "the same sound as" in not_added["again.wav"], not_added


def test_dataset_show_names_the_files_that_could_not_be_read(home: Path, tmp_path: Path) -> None:
    """`dataset show` said "7 files could not be read" and named none; now a few, as `create` names them.
    Why they were left out is counted: a copy of another file (nothing to mend) was counted as failed."""
    made = write_kinds(tmp_path / "ex", per_kind=2, seed=17)
    broken = [tmp_path / "ex" / "tone" / f"broken{i}.wav" for i in range(6)]
    for path in broken:
        path.write_bytes(b"RIFF not audio")
    shutil.copy(made[0], made[0].with_name("zz copy.wav"))
    vibrary("dataset", "create", "mine", str(tmp_path / "ex"), home=home)
    shown = vibrary("dataset", "show", "mine", home=home)
    said = "7 files left out when it was made (6 unreadable, 1 the same sound as another)"  # (not an add's own)
    assert said in shown.stdout, shown.stdout
    named = [line for line in shown.stderr.splitlines() if line.startswith("skipped ")]
    assert len(named) == 5 and {n.split(": ")[0].removeprefix("skipped ") for n in named} < {str(p) for p in broken}
    assert shown.stderr.splitlines()[-1] == "  … and 2 more", shown.stderr
    (line,) = json_lines(vibrary("dataset", "show", "mine", "--json", home=home).stdout)
    assert line["failed"] == 7 and line["left_out"] == {"unreadable": 6, "silent": 0, "duplicate": 1}
    assert {f["path"] for f in line["left_out_files"]} == {*map(str, broken), str(made[0].with_name("zz copy.wav"))}


def test_a_tag_left_with_one_example_is_said_at_once_and_stops_training_before_any_upload(
    home: Path, tmp_path: Path
) -> None:
    files = write_kinds(tmp_path / "ex", per_kind=3, seed=9)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    merged = dataset.edit(home, "mine", rename=[("noise", "hiss"), ("Noise", "hiss")])  # one tag named twice
    assert merged.per_class == {"hiss": 3, "thump": 3, "tone": 3}
    solo = dataset.edit(home, "mine", relabel=[(str(files[0]), "solo")])
    assert solo.advice.startswith("cannot train yet: each tag needs at least 2 examples; too few: solo (1)")
    shown = vibrary("dataset", "show", "mine", home=home).stdout
    assert "cannot train yet" in shown
    refused = vibrary("train", "mine", "--trainer", "127.0.0.1:9", home=home, check=False)  # no trainer there
    assert refused.returncode == 1 and "dataset 'mine' cannot train: each tag needs" in refused.stderr


def test_a_model_is_not_trained_under_the_built_in_models_name(home: Path, tmp_path: Path) -> None:
    """A dataset called `demo` trained into demo@2 and deactivated the built-in model: its 15 instrument
    tags were gone from every search. Refused before any trainer is called (none listens on port 9)."""
    write_kinds(tmp_path / "ex", per_kind=2, seed=13)
    vibrary("dataset", "create", "demo", str(tmp_path / "ex"), home=home)
    for extra in ((), ("--name", "demo")):
        name = "demo" if not extra else "mine"
        if extra:
            vibrary("dataset", "create", "mine", str(tmp_path / "ex"), home=home)
        refused = vibrary("train", name, *extra, "--trainer", "127.0.0.1:9", home=home, check=False)
        assert refused.returncode == (2 if extra else 1), refused.stderr  # a mistyped --name: a usage error
        assert "model name 'demo' is the built-in model's" in refused.stderr and "--name NAME" in refused.stderr
        assert "127.0.0.1:9" not in refused.stderr  # said before any upload
    listed = json_lines(vibrary("models", "list", "--json", home=home).stdout)
    assert [(m["name"], m["version"], m["active"]) for m in listed] == [("demo", 1, True)]
    d = start_daemon(home)
    try:  # over the API: refused before a stream starts (it went WAITING, then FAILED, with status OK)
        for dataset_name, name in (("demo", ""), ("mine", "demo")):
            assert _code(functools.partial(d.client.train, dataset_name, name=name)) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        d.stop()


def test_a_mistyped_dataset_name_is_answered_with_the_nearest_one_not_told_to_create_it(
    home: Path, tmp_path: Path
) -> None:
    write_kinds(tmp_path / "ex", per_kind=2, seed=14)
    vibrary("dataset", "create", "mytags", str(tmp_path / "ex"), home=home)
    twin = vibrary(
        "dataset", "create", "MyTags", str(tmp_path / "ex" / "tone"), str(tmp_path / "ex"), home=home, check=False
    )
    assert twin.returncode == 1 and "dataset 'mytags' exists, and names that differ only in case" in twin.stderr
    assert dataset.names(home) == ["mytags"]  # one folder on macOS: it was replaced there under another name
    shutil.copytree(dataset.dataset_dir(home, "mytags"), dataset.dataset_dir(home, "MYTAGS"))  # made before
    vibrary("dataset", "create", "mytags", str(tmp_path / "ex"), "--replace", home=home)  # each can still be replaced
    for command in (("train", "mytag"), ("dataset", "show", "Mytags"), ("dataset", "drop", "mytgs", "tone")):
        typo = vibrary(*command, home=home, check=False)
        assert typo.returncode == 1 and "did you mean 'mytags'?" in typo.stderr, typo.stderr
        assert "dataset create" not in typo.stderr  # it was told to make a second, empty-handed
    other = vibrary("dataset", "show", "drums", home=home, check=False)
    assert "no dataset 'drums'; create it with `vibrary dataset create drums DIR...`" in other.stderr
    gone = vibrary("dataset", "delete", "drums", home=home, check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == "vibrary: no dataset 'drums'"


def test_dataset_delete_asks_on_a_terminal(home: Path, tmp_path: Path) -> None:
    """`dataset delete` took a dataset's confirmed tags and every edit made to them without a word: on a
    terminal it asks first (no: kept, exit 1); --yes, or a script (no terminal), deletes at once."""
    import pty

    write_kinds(tmp_path / "ex", per_kind=2, seed=4)
    for name in ("a", "b", "c"):
        vibrary("dataset", "create", name, str(tmp_path / "ex"), home=home)

    def typed(answer: str, *args: str) -> subprocess.CompletedProcess[str]:
        terminal, stdin = pty.openpty()
        os.write(terminal, answer.encode())
        try:
            return subprocess.run(
                [*AS_USER, sys.executable, "-m", "vibrary.clients.cli", "dataset", "delete", *args],
                env={**os.environ, "VIBRARY_HOME": str(home)},
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(terminal)
            os.close(stdin)

    kept = typed("n\n", "a")
    assert kept.returncode == 1 and kept.stderr.startswith("delete dataset a (6 clips in 3 tags, with its edits;")
    assert kept.stderr.endswith("[y/N] vibrary: dataset a kept\n") and dataset.names(home) == ["a", "b", "c"]
    assert typed("y\n", "a").returncode == 0 and dataset.names(home) == ["b", "c"]
    yes = typed("", "b", "--yes")
    assert yes.returncode == 0 and "[y/N]" not in yes.stderr and dataset.names(home) == ["c"]
    assert "[y/N]" not in typed("", "nope").stderr  # none: said so, nothing asked
    vibrary("dataset", "delete", "c", home=home)  # a script: no terminal, not asked
    assert dataset.names(home) == []


def test_labels_an_older_version_spelled_with_spaces_stay_mergeable(home: Path, tmp_path: Path) -> None:
    """Labels are spelled as tags now (hi-hat); a dataset made before keeps "hi hat", and a merge into it
    must not make a second class "hi-hat"."""
    older = {"noise": "hi hat", "thump": "closed hat", "tone": "kick"}
    written = write_kinds(tmp_path / "ex", per_kind=2, seed=4)
    examples = [dataset.Example(str(f), older[f.parent.name], f.parent.name) for f in written]
    dataset.build(home, "old", examples)
    edited = dataset.edit(home, "old", rename=[("Closed Hat", "hi hat")])
    assert edited.per_class == {"hi hat": 4, "kick": 2}
    a_kick = next(f for f in written if f.parent.name == "tone")
    edited = dataset.edit(home, "old", relabel=[(str(a_kick), "Hi  Hat")])
    assert edited.per_class == {"hi hat": 5, "kick": 1}
    edited = dataset.edit(home, "old", relabel=[(str(a_kick), "kick")])
    edited = dataset.edit(home, "old", relabel=[(str(a_kick), "Hi_Hat")])  # as tags are spelled now: that tag
    assert edited.per_class == {"hi hat": 5, "kick": 1}


def test_a_damaged_dataset_is_named_with_what_to_do_and_can_be_deleted(home: Path, tmp_path: Path) -> None:
    write_kinds(tmp_path / "ex", per_kind=2, seed=4)
    for name in ("good", "torn", "mangled"):
        dataset.build(home, name, dataset.examples_from_folders([str(tmp_path / "ex")]))
    torn = dataset.dataset_dir(home, "torn")
    next((torn / "shards").glob("*.npz")).unlink()
    with pytest.raises(ValueError, match=r"dataset 'torn' is damaged \(shard .*create it again"):
        dataset.edit(home, "torn", rename=[("noise", "hiss")])  # was a bare "[Errno 2] No such file"
    labels = dataset.dataset_dir(home, "good") / "labels.json"  # a later release's field: left to it, not damage
    record = json.loads(labels.read_text())
    record["files"] = [{**row, "loudness": -12.0} for row in record["files"]]
    labels.write_text(json.dumps(record))
    assert sum(dataset.load_report(home, "good").per_class.values()) == 6
    labels = dataset.dataset_dir(home, "mangled") / "labels.json"
    for garbage in ("{not json", "[]", '{"manifest": null, "files": 5}', '{"manifest": null, "files": [5]}'):
        labels.write_text(garbage)
        with pytest.raises(ValueError, match=r"dataset 'mangled' is damaged .*vibrary dataset delete mangled"):
            dataset.load_report(home, "mangled")
    labels.unlink()  # an older dataset: its manifest alone
    (labels.parent / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset 'mangled' is damaged .*bad dataset manifest"):
        dataset.load(home, "mangled")
    (labels.parent / "manifest.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match=r"dataset 'mangled' is damaged .*utf-8"):
        dataset.load(home, "mangled")
    labels.write_text("[]")
    listed = vibrary("dataset", "list", home=home)  # one damaged dataset hides none of the others
    assert "good: 6 clips" in listed.stdout and "dataset mangled cannot be read" in listed.stderr
    anew = vibrary("dataset", "create", "mangled", str(tmp_path / "ex"), home=home, check=False)
    assert anew.returncode == 1 and "exists (damaged" in anew.stderr and "--replace builds it anew" in anew.stderr
    assert "dataset add" not in anew.stderr  # (what cannot be added to: the advice went round in a circle)
    with pytest.raises(dataset.Exists, match="exists \\(6 clips"):  # checked under its lock, as it builds
        dataset.build(home, "good", dataset.examples_from_folders([str(tmp_path / "ex")]), replace=False)
    dataset.delete(home, "mangled")
    dataset.delete(home, "torn")
    assert dataset.names(home) == ["good"]
    # cut between a build's last two renames: its labels there, its manifest not; `show` and `train` took it,
    # and the list hid it
    (dataset.dataset_dir(home, "good") / "manifest.json").unlink()
    assert dataset.names(home) == ["good"]
    # a removal cut short (a kill): moved aside at once, neither listed nor loaded, and gone with the next
    remains = home / "datasets" / ".deleted-gone-1-1"
    shutil.copytree(dataset.dataset_dir(home, "good"), remains)
    assert dataset.names(home) == ["good"]
    elsewhere = tmp_path / "drive" / "kept"  # a dataset kept on another drive, the home linking to it
    shutil.copytree(dataset.dataset_dir(home, "good"), elsewhere)
    dataset.dataset_dir(home, "linked").symlink_to(elsewhere)
    dataset.delete(home, "good")
    assert dataset.names(home) == ["linked"] and not remains.exists()
    dataset.delete(home, "linked")  # the link goes (it said "deleted" and kept it, or failed on it)
    assert dataset.names(home) == [] and (elsewhere / "labels.json").exists()
    with dataset.reading(home, "ghost"):  # (as a training of a name mistyped takes it)
        pass
    assert list((home / "datasets").iterdir()) == []  # no `.good.lock` and the like left for every name ever used


def test_a_dataset_lock_taken_on_a_file_a_delete_removed_is_taken_again(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`delete` removes the lock file: a command that opened it just before, and locked it after the delete let
    go, held a lock no other command could see, and two changed one dataset at once."""
    import fcntl

    flock, lock = fcntl.flock, home / "datasets" / ".mine.lock"

    def delete_between_open_and_lock(f: io.TextIOWrapper, how: int) -> None:
        if not lock.with_name("cut").exists():
            lock.with_name("cut").touch()
            lock.unlink()  # as a delete does, between this open and this lock
        flock(f, how)

    monkeypatch.setattr(dataset.fcntl, "flock", delete_between_open_and_lock)
    with dataset.reading(home, "mine"):
        monkeypatch.undo()
        with pytest.raises(dataset.Busy), dataset._held(home, "mine", change=True):
            pass


def _pcm_windows(path: Path, n: int = 64, width: int = 32) -> list[bytes]:
    """Byte runs of a file's PCM samples taken where the sound is loud, as they sit in the file."""
    pcm, _ = sf.read(path, dtype="int16")
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    starts = loud[np.linspace(0, len(loud) - width - 1, n).astype(int)]
    raw = pcm.tobytes()
    return [raw[2 * s : 2 * s + 2 * width] for s in starts if len(raw) >= 2 * s + 2 * width]


def test_only_spectrograms_and_labels_leave_the_machine(home: Path, tmp_path: Path) -> None:
    files = write_kinds(tmp_path / "ex", per_kind=3, seed=5)
    report = dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    manifest, shard_dir = dataset.load(home, "mine")
    upload = [manifest.to_json().encode()] + [(shard_dir / f"{s.sha256}.npz").read_bytes() for s in manifest.shards]
    assert str(tmp_path) not in manifest.to_json()
    payload = b""
    for blob in upload[1:]:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            assert sorted(z.namelist()) == ["codes.npy", "groups.npy", "labels.npy"]
            arrays = {name: np.load(io.BytesIO(z.read(name))) for name in z.namelist()}
        assert arrays["codes.npy"].dtype == np.uint8 and arrays["codes.npy"].shape[1:] == P.shape
        assert arrays["labels.npy"].dtype == np.int16
        assert all(len(g) == 12 and int(g, 16) >= 0 for g in arrays["groups.npy"])  # hashes, not folder names
        payload += b"".join(z.tobytes() for z in arrays.values())
    everything = payload + b"".join(upload)
    for f in files:
        windows = _pcm_windows(f)
        assert len(windows) > 50
        assert not any(w in everything for w in windows), f"PCM of {f.name} found in the upload"
    assert report.ratio > 20


def test_advice_reads_the_curve_and_names_the_smallest_class(tmp_path: Path) -> None:
    for family in (f"{f}{how}" for f in ("instruments", "effects") for how in ("", " half known", " as new")):
        assert family in json.loads(advice.CURVE.read_text())  # whatever numbers the file holds, this is its shape
        points, source = advice.load_curve(family)
        assert len(points) >= 2 and all(0 < acc <= 1 for _, acc in points) and source
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"instruments": {"1": 0.5, "10": 0.8, "50": 0.95}, "source": "measured"}))
    text = advice.advise({"kick": 30, "snare": 4}, path=curve)
    assert text.startswith("your smallest tag, 'snare', has 4 examples: expect about 68% accuracy")
    assert "10 examples of every tag (6 more of 'snare') should give about 80%" in text and "measured" in text
    uneven = advice.advise({"bell": 2, "pad": 8, "pluck": 8, "kick": 30}, path=curve)  # each lacks its own
    assert "10 examples of every tag (8 more of 'bell', 2 more of 'pad', 2 more of 'pluck')" in uneven, uneven
    assert "add little" in advice.advise({"kick": 60, "snare": 50}, path=curve)
    # effects the demo knows train from what it knows (trainer/known.py): their own curve, as they train
    fx = advice.advise({"reverb": 12, "Echo": 10})  # measured with 12 effects, said of 2 (chance 50 %, not 8 %)
    effects_at_10 = advice.rescaled(advice.expected(10, advice.load_curve("effects")[0]), 12, 2)
    assert advice.rescaled(0.69, 9, 2) == pytest.approx(0.5 + 0.5 * (0.69 - 1 / 9) / (1 - 1 / 9))
    assert f"expect about {effects_at_10:.0%} accuracy" in fx
    assert "(from Vibrary's own test of 12 effects the demo model knows, scaled to your 2 tags; " in fx, fx
    drums = advice.advise({"Kicks": 12, "snare": 2})  # so are the demo's own classes, read off their own curve
    known_at_2, new_at_2 = (advice.expected(2, advice.load_curve(c)[0]) for c in ("instruments", "instruments as new"))
    assert f"{known_at_2:.0%}" != f"{new_at_2:.0%}"  # (the two curves part at two clips a class)
    assert (
        f"expect about {advice.rescaled(known_at_2, 9, 2):.0%}" in drums
        and "(from Vibrary's own test of 9 instruments the demo model knows, scaled to your 2 tags; " in drums
    )
    partly = advice.advise({"reverb": 12, "delay": 10, "my fuzz": 11})  # trains from the rows, fuzz as new
    half_at_10 = advice.expected(10, advice.load_curve("effects half known")[0])
    known_at_10 = advice.expected(10, advice.load_curve("effects")[0])
    third = half_at_10 + (known_at_10 - half_at_10) / 3  # 2 of 3 known: a third of the way from half to all
    assert f"expect about {advice.rescaled(third, 12, 3):.0%}" in partly
    drawn = "(from Vibrary's own test of 12 effects, between all and half of them known to the demo model (it knows"
    assert f"{drawn} 2 of your 3 tags), scaled to your 3 tags; " in partly, partly
    twins = advice.advise({"dry": 10, "clean": 12, "reverb": 10}, dataset="fx")  # `dry/` beside `clean/`: one tag
    assert "'clean' and 'dry' are one tag to the demo model (clean): as two, 'clean' trains as a new one" in twins
    assert "`vibrary dataset merge fx dry --into clean` makes them one" in twins and "merge" not in partly
    spaced = advice.advise({"Low Pass": 10, "lowpass": 12, "reverb": 10}, dataset="fx")  # pasted, it works
    assert "`vibrary dataset merge fx 'Low Pass' --into lowpass`" in spaced
    assert "merge" not in advice.advise({"dry": 10, "clean": 12, "reverb": 10}, pull=0)  # --as-new: all new
    # a new tag of 2 beside known ones: the mixed curve is flat where the known carry it, the new tag's is not
    as_new = advice.load_curve("instruments as new")[0]
    mixed = advice.advise({"bass": 10, "synth": 36, "wobbly": 2})
    assert "add little" not in mixed and "but 'wobbly' is new to the demo model" in mixed, mixed
    assert f"about {advice.rescaled(advice.expected(2, as_new), 9, 3):.0%} at 2 a tag" in mixed
    halves = {"reverb": 10, "delay": 10, "my fuzz": 10, "my grit": 10}
    assert f"expect about {advice.rescaled(half_at_10, 12, 4):.0%}" in advice.advise(halves)  # the half-known curve
    points = advice._between("effects", 0.75, advice.CURVE)[0]  # 9 of 12 effects known: measured 0.77 at ten
    assert advice.expected(10, points) == pytest.approx((half_at_10 + known_at_10) / 2)
    for other in ({"reverb": 12, "my fuzz": 10}, {"kick": 12, "reverb": 10}, {"dark": 12, "bright": 10}):
        said = "(from Vibrary's own test of 9 instruments trained as new tags, scaled to your 2 tags; "
        assert said in advice.advise(other)
    effects_as_new = advice.expected(10, advice.load_curve("effects as new")[0])
    for as_new in (
        advice.advise({"reverb": 12, "Echo": 10}, pull=0),
        advice.advise({"reverb": 12, "Echo": 10}, base="none"),
    ):
        assert (
            f"expect about {advice.rescaled(effects_as_new, 12, 2):.0%}" in as_new
            and "(from Vibrary's own test of 12 effects trained as new tags, scaled to your 2 tags; " in as_new
        )
    assert "effects the demo model knows" in advice.advise({"reverb": 12, "Echo": 10}, pull=1)  # any pull but 0


def test_cli_suggest_create_edit_show_and_synonyms(home: Path, tmp_path: Path) -> None:
    pack = tmp_path / "Pack"
    write_kinds(pack, per_kind=3, seed=6, folders=VENDOR, names=VENDOR_FILES)
    sf.write(pack / "Take 1.wav", np.zeros(4410, np.float32), 44100)  # nothing to go by
    suggested = json_lines(vibrary("dataset", "suggest", "--json", str(pack), home=home).stdout)
    assert len(suggested) == 10
    assert {Path(s["path"]).parent.name: s["tag"] for s in suggested if s["tag"]} == {
        VENDOR[k]: RIGHT[k] for k in KINDS
    }
    human = vibrary("dataset", "suggest", str(pack), home=home).stdout
    assert "no suggestion for 1 file:" in human and "Take 1.wav: add a synonym" in human
    mixed = tmp_path / "Mixed"  # a tag from two reasons: the commoner first, counted, each with an example of it
    for name in ("Synth Leads/Take 1.wav", "Synth Leads/Take 2.wav", "Lead_07.wav"):
        (mixed / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(mixed / name, np.full(4410, 0.25, np.float32), 44100)
    lines = vibrary("dataset", "suggest", str(mixed), home=home).stdout.splitlines()
    assert lines[0].endswith("3 files, from folder 'Synth Leads' (2), filename 'Lead_07' (1)"), lines
    assert lines[1:3] == [
        f"{'':16}   e.g. {mixed / 'Synth Leads' / 'Take 1.wav'}",
        f"{'':16}   e.g. {mixed / 'Lead_07.wav'}",
    ]
    loops = tmp_path / "Loops Pack"  # a drum loop's names say only how it is: the hint said "add a synonym" of
    loops.mkdir()
    sf.write(loops / "Drum Loop 140 Full.wav", np.full(4410, 0.25, np.float32), 44100)
    both = tmp_path / "Kicks & Snares"  # which of its two sounds: a synonym is no way to say it
    both.mkdir()
    sf.write(both / "Take 01.wav", np.full(4410, 0.25, np.float32), 44100)
    which = "Take 01.wav: its names name more than one sound (kick, snare): rename it, or relabel it"
    assert which in vibrary("dataset", "suggest", str(both), home=home).stdout
    hint = "its names say only how it sounds (loop, drums): `vibrary synonyms add drums drums` makes drums a tag"
    assert hint in vibrary("dataset", "suggest", str(loops), home=home).stdout  # a word the table had
    vibrary("synonyms", "add", "drums", "drums", home=home)  # as it says (it was WORD: `add drums drums` refused)
    (looped,) = json_lines(vibrary("dataset", "suggest", "--json", str(loops), home=home).stdout)
    assert looped["tag"] == "drums"
    vibrary("synonyms", "remove", "drums", home=home)
    assert not json_lines(vibrary("dataset", "suggest", "--json", str(loops), home=home).stdout)[0]["tag"]
    refused = vibrary("synonyms", "add", "kick", "kick", home=home, check=False)  # a sound is a tag anyway
    assert refused.returncode == 1 and "is the tag 'kick' itself" in refused.stderr
    (tmp_path / "notes").mkdir()
    nothing = vibrary("dataset", "suggest", str(tmp_path / "notes"), home=home, check=False)
    assert nothing.returncode == 1 and "no audio files under" in nothing.stderr
    (tmp_path / "notes" / "README.txt").write_text("read me")  # given by a glob: "no audio files under README.txt"
    nothing = vibrary("dataset", "suggest", str(tmp_path / "notes" / "README.txt"), home=home, check=False)
    said = f"vibrary: {tmp_path / 'notes' / 'README.txt'}: not an audio file that Vibrary reads\n"
    assert nothing.returncode == 1 and nothing.stderr == said, nothing.stderr
    unnamed = vibrary("dataset", "create", "--labels", "suggest", "x", str(pack / "Take 1.wav"), home=home, check=False)
    assert unnamed.returncode == 1 and "no file has a tag suggested (1 file skipped)" in unnamed.stderr  # "no audio"

    created = json_lines(
        vibrary("dataset", "create", "--json", "--labels", "suggest", "pk", str(pack), home=home).stdout
    )
    assert created[-1]["per_class"] == {"hihat": 3, "kick": 3, "synth": 3} and created[-1]["ratio"] > 20
    assert "your smallest tag" in created[-1]["advice"]
    assert created[-1]["left_out"]["untagged"] == created[-1]["failed"] == 1  # counted with the others: 0 before
    assert created[-1]["left_out_files"] == [{"path": str(pack / "Take 1.wav"), "error": "no tag suggested"}]
    assert (
        "1 file left out (1 with no tag suggested)"
        in vibrary("dataset", "create", "--labels", "suggest", "pk2", str(pack), home=home).stdout
    )
    onto = vibrary("dataset", "rename", "pk2", "kick", "hihat", home=home)  # onto a tag it has: a merge, said
    assert "kick merged into hihat, a tag the dataset had already" in onto.stderr and "hihat 6, synth 3" in onto.stdout
    vibrary("dataset", "delete", "pk2", home=home)

    merged = json_lines(
        vibrary("dataset", "merge", "--json", "pk", "kick", "hihat", "--into", "drums", home=home).stdout
    )
    assert merged[-1]["per_class"] == {"drums": 6, "synth": 3}
    renamed = json_lines(vibrary("dataset", "rename", "--json", "pk", "synth", "lead", home=home).stdout)
    assert renamed[-1]["classes"] == ["drums", "lead"]
    a_drum = next(p for p, tag in dataset.labelled_files(home, "pk") if tag == "drums")
    dropped = vibrary("dataset", "relabel", "pk", a_drum, "", home=home)  # said, not only by the counts
    assert f"{a_drum} dropped from dataset pk" in dropped.stderr and "drums 5, lead 3" in dropped.stdout
    vibrary("dataset", "add", "--restore", "pk", str(pack), home=home)  # (it was the pack's, with the rest)
    typo = vibrary("dataset", "relabel", "pk", a_drum, "drusm", home=home)  # a new tag, once unsaid
    assert "drusm is a new tag of this one file; did you mean drums?" in typo.stderr, typo.stderr
    assert "did you mean" not in vibrary("dataset", "relabel", "pk", a_drum, "drums", home=home).stderr
    respelled = vibrary("dataset", "rename", "pk", "lead", "Lead/Solo", home=home)  # (unsaid: a tag lead-solo)
    assert "'Lead/Solo' is spelled lead-solo as a tag" in respelled.stderr and "lead-solo 3" in respelled.stdout
    assert "spelled" not in vibrary("dataset", "rename", "pk", "lead-solo", "lead", home=home).stderr
    shown = vibrary("dataset", "show", "pk", home=home).stdout
    assert "drums 6, lead 3" in shown and "smaller, spectrograms only" in shown and "expect" in shown
    upload = shown.split("→ upload ")[1].split(" (")[0]
    assert upload.endswith(" kB") and int(upload.split()[0]) > 0  # 9 clips are not "0.0 MB"
    bad = vibrary("dataset", "drop", "pk", "lead", home=home, check=False)
    assert bad.returncode == 1 and "at least 2" in bad.stderr
    assert "more examples: `vibrary dataset add pk DIR...`" in shown
    second = tmp_path / "Second Pack"
    write_kinds(second, per_kind=1, seed=8, folders=VENDOR, names=VENDOR_FILES)
    adding = vibrary("dataset", "add", "--json", "pk", str(second), home=home)  # labelled as made: by suggestion
    grown = json_lines(adding.stdout)  # (by its folders' names it grew classes of them)
    assert grown[-1]["added"] == 3 and grown[-1]["per_class"] == {"drums": 8, "lead": 4}  # merged, renamed
    assert "labelled as pk was made: --labels suggest" in adding.stderr
    missing = vibrary("dataset", "add", "nope", str(second), home=home, check=False)
    assert missing.returncode == 1 and "no dataset 'nope'" in missing.stderr
    for args in (("dataset", "create", "a/b", str(second)), ("train", "a b")):  # no name of a dataset: usage
        named = vibrary(*args, home=home, check=False)
        assert named.returncode == 2 and "use letters, digits" in named.stderr and "left out" not in named.stderr

    added = json_lines(vibrary("synonyms", "add", "--json", "Take", "field-recording", home=home).stdout)
    assert added == [{"alias": "take", "tag": "field-recording", "builtin": False}]
    listed = json_lines(vibrary("synonyms", "list", "--json", home=home).stdout)
    assert {"alias": "bd", "tag": "kick", "builtin": True} in listed
    again = json_lines(vibrary("dataset", "suggest", "--json", str(pack / "Take 1.wav"), home=home).stdout)
    assert again[0]["tag"] == "field-recording" and again[0]["source"] == "filename"

    broken = dataset.dataset_dir(home, "broken") / "manifest.json"
    broken.parent.mkdir()
    broken.write_text("{}")
    names = vibrary("dataset", "list", "--json", home=home)
    assert [d["dataset"] for d in json_lines(names.stdout)] == ["pk"] and "broken cannot be read" in names.stderr
    vibrary("dataset", "delete", "pk", home=home)
    assert json_lines(vibrary("dataset", "list", "--json", home=home).stdout) == []
    none = vibrary("dataset", "list", home=tmp_path / "new home")  # it printed nothing at all
    assert none.stdout == "" and "no datasets yet: `vibrary dataset create NAME DIR` makes one" in none.stderr
    gone = vibrary("dataset", "show", "pk", home=home, check=False)
    assert gone.returncode == 1 and "no dataset 'pk'" in gone.stderr


def test_cli_output_cut_short_by_its_reader_is_no_error(home: Path) -> None:
    proc = subprocess.Popen(
        [*AS_USER, sys.executable, "-m", "vibrary.clients.cli", "synonyms", "list"],
        env={**os.environ, "VIBRARY_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the CLI has started up, let alone written: as `| head -0` would
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


# -- the whole workflow through the daemon's API ---------------------------------------------------------
def _code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status a refused call ends with (raw stub calls and client calls alike)."""
    with pytest.raises((DaemonError, grpc.RpcError)) as err:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    e = err.value
    return e.code if isinstance(e, DaemonError) else e.code()


def _collect(into: list[pb.Event], client: Client) -> None:
    with contextlib.suppress(DaemonError, DaemonNotRunning):  # the stream ends when the client or daemon does
        into.extend(client.events())


def _top(client: Client, folder: Path, model: str) -> dict[str, str]:
    """file name → the model's best tag, for every file under folder."""
    out = {}
    for f in client.tags([str(folder)]):
        ranked = [t for t in f.tags if t.model == model]
        out[Path(f.path).name] = ranked[0].tag if ranked else ""
    return out


@pytest.mark.slow
def test_own_tags_end_to_end_through_the_daemon_api(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pack = tmp_path / "Pack"
    write_kinds(pack, per_kind=8, seed=1, folders=VENDOR, names=VENDOR_FILES)
    d = start_daemon(home)
    events: list[pb.Event] = []
    listener = Client(home_dir=home)
    threading.Thread(target=_collect, args=(events, listener), daemon=True).start()
    try:
        c = d.client
        # malformed or impossible requests say so and change nothing
        relative = pb.SuggestRequest(paths=["relative/path"])
        assert _code(lambda: c.stub.SuggestLabels(relative)) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: c.suggest([str(tmp_path / "absent")])) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: c.create_dataset("bad name!", [(str(pack), "x")])) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: c.train("nope")) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: c.edit_dataset("nope", drop=["x"])) == grpc.StatusCode.NOT_FOUND
        assert _code(c.cancel_training) == grpc.StatusCode.FAILED_PRECONDITION

        suggestions = c.suggest([str(pack)])
        assert {t.tag: t.files for t in suggestions.tags} == {"kick": 8, "hihat": 8, "synth": 8}
        assert all(s.source == "folder" and s.raw in VENDOR.values() for s in suggestions.files)
        progress = list(c.create_dataset("mine", [(s.path, s.tag) for s in suggestions.files]))
        assert progress[-1].done == progress[-1].total == 24 and progress[-1].dataset.clips == 24
        assert [(k.tag, k.clips) for k in progress[-1].dataset.classes] == [("hihat", 8), ("kick", 8), ("synth", 8)]
        assert progress[-1].dataset.ratio > 20 and "your smallest tag" in progress[-1].dataset.advice
        assert [x.name for x in c.datasets()] == ["mine"] and c.dataset("mine") == progress[-1].dataset
        more = write_kinds(tmp_path / "More", per_kind=1, seed=2, folders=VENDOR, names=VENDOR_FILES)
        labelled = [(str(f), RIGHT[kind]) for f, kind in zip(more, KINDS, strict=True)]
        assert _code(lambda: list(c.create_dataset("nope", labelled, add=True))) == grpc.StatusCode.NOT_FOUND
        again = [(suggestions.files[0].path, "other")]  # a file already in it keeps its tag: nothing to add
        same = list(c.create_dataset("mine", again, add=True))[-1]
        assert (same.added, same.dataset.clips, same.done, same.total) == (0, 24, 1, 1)
        grown = list(c.create_dataset("mine", labelled, add=True))
        assert grown[-1].added == 3 and grown[-1].dataset.clips == 27
        # a create of a name in use replaces it only when asked: it lost 27 clips and every edit, unsaid
        with pytest.raises(DaemonError, match=r"dataset 'mine' exists \(27 clips.*`replace` builds it anew") as e:
            list(c.create_dataset("mine", labelled))
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and c.dataset("mine").clips == 27
        both = lambda: list(c.create_dataset("mine", labelled, add=True, replace=True))  # noqa: E731
        assert _code(both) == grpc.StatusCode.INVALID_ARGUMENT and c.dataset("mine").clips == 27
        made_anew = lambda: list(c.create_dataset("other", labelled, restore=True))  # noqa: E731  (ignored, unsaid)
        assert _code(made_anew) == grpc.StatusCode.INVALID_ARGUMENT and "other" not in {d.name for d in c.datasets()}
        assert list(c.create_dataset("spare", labelled))[-1].dataset.clips == 3
        gone = [(str(tmp_path / f"gone_{i}.wav"), "x") for i in range(130)]
        relabelled = [(s.path, "x" if s.tag == "kick" else "y") for s in suggestions.files]
        spare = list(c.create_dataset("spare", relabelled + gone, replace=True))
        assert [(k.tag, k.clips) for k in spare[-1].dataset.classes] == [("x", 8), ("y", 16)]
        # the first 100 unreadable files and how many: every one made replies pass gRPC's 4 MB
        assert (len(spare[-1].dataset.failed), spare[-1].dataset.failed_count) == (100, 130)
        moved = c.edit_dataset("spare", relabel=[(suggestions.files[0].path, "x")], rename=[("y", "z")])
        assert [(k.tag, k.clips) for k in moved.classes] == [("x", 9), ("z", 15)]
        assert _code(lambda: c.edit_dataset("spare", drop=["x"])) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: c.edit_dataset("spare", rename=[("nope", "x")])) == grpc.StatusCode.INVALID_ARGUMENT
        (dataset.dataset_dir(home, "spare") / "labels.json").unlink()  # as made before datasets kept labels
        assert _code(lambda: c.edit_dataset("spare", rename=[("x", "w")])) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(
            DaemonError, match="made before datasets could be edited"
        ) as e:  # not "could not be written"
            list(c.create_dataset("spare", relabelled, add=True))
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "could not be written" not in str(e.value)
        assert [x.name for x in c.delete_dataset("spare")] == ["mine"]
        assert _code(lambda: c.dataset("spare")) == grpc.StatusCode.NOT_FOUND
        assert ("wub", "wobble", False) in {(x.alias, x.tag, x.builtin) for x in c.add_synonyms([("Wub", "wobble")])}
        assert ("bd", "kick", True) in {(x.alias, x.tag, x.builtin) for x in c.synonyms()}
        assert _code(lambda: c.add_synonyms([("", "kick")])) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: c.train("mine", trainer="no-port")) == grpc.StatusCode.INVALID_ARGUMENT
        # no cloud settings: refused before the stream (it went WAITING, then FAILED, status OK)
        assert _code(lambda: c.train("mine", trainer="cloud")) == grpc.StatusCode.FAILED_PRECONDITION
        for bad in ('{"epochz": 3}', '{"epochs": "x"}', '{"batch_size": 0}', "not json"):  # before any trainer starts
            assert _code(lambda: c.train("mine", options=bad)) == grpc.StatusCode.INVALID_ARGUMENT, bad  # noqa: B023

        first = _train(c, "mine", {})  # tags the demo knows: fitted from its rows of them, no epochs
        assert first.model == "mine@1" and list(first.classes) == ["hihat", "kick", "synth"]
        assert "already knows these tags (hihat, kick, synth)" in first.message, first.message
        active = {m.name: m.version for m in c.models() if m.active}
        assert active == {"demo": 1, "mine": 1}  # a new tag family beside the demo model's

        library = tmp_path / "Library"
        library.mkdir()
        c.add_watch(str(library))
        new = write_kinds(library, per_kind=2, seed=42, folders={k: "incoming" for k in KINDS})  # unseen clips
        wait_for(lambda: sum(f.state == "indexed" for f in c.tags([str(library)])) == 6, timeout=60)
        tags = {Path(f.path).name: {t.model for t in f.tags} for f in c.tags([str(library)])}
        assert all(models == {"demo", "mine"} for models in tags.values()), tags
        mine = _top(c, library, "mine")
        right = sum(mine[f.name] == RIGHT[f.name.split("_")[0]] for f in new)
        assert right >= 5, mine

        renamed = c.edit_dataset("mine", rename=[("kick", "boom")])
        assert [k.tag for k in renamed.classes] == ["boom", "hihat", "synth"]
        second = _train(c, "mine", AS_NEW)
        assert second.model == "mine@2" and "already knows" not in second.message
        # new tags (as new), too few clips to hold any out: folds scored by a quick fit, not the training clips' 1.0
        stand_in = [training.FOLDS_STAND_IN.format(n) for n in range(2, 6)]  # (folders held out whole, where several)
        assert second.accuracy_of in stand_in and second.val_accuracy > 0.3, second
        thumps = [f.name for f in new if f.name.startswith("thump")]

        def thumps_say(tag: str, never: str) -> bool:
            top = [_top(c, library, "mine")[n] for n in thumps]
            return tag in top and never not in top

        wait_for(lambda: thumps_say("boom", never="kick"), timeout=60)  # the library re-tagged by version 2
        c.activate("mine", 1)  # rollback
        wait_for(lambda: thumps_say("kick", never="boom"), timeout=60)
        assert {m.name: m.version for m in c.models() if m.active} == {"demo": 1, "mine": 1}

        # a caller who goes away does not stop a training; CancelTraining does, and installs nothing
        leaving = Client(home_dir=home)
        next(iter(leaving.train("mine", options=json.dumps({**AS_NEW, "epochs": 500, "patience": 500}))))
        leaving.close()
        wait_for(lambda: c.status().training.epoch >= 2, timeout=120)
        with pytest.raises(DaemonError, match="already training on dataset 'mine': it goes on whoever follows it"):
            list(c.train("mine"))  # (the caller that left it was told to cancel a training that went on fine)
        cancelling = vibrary("train", "--cancel", "--json", home=home)  # (a terminal had no way to)
        assert json_lines(cancelling.stdout) == [{"dataset": "mine", "action": "cancel", "message": "cancelling"}]
        wait_for(lambda: c.status().training.state == pb.TrainProgress.CANCELLED, timeout=60)
        nothing = vibrary("train", "--cancel", home=home, check=False)
        assert nothing.returncode == 1 and nothing.stderr == f"vibrary: {NO_TRAINING}\n", nothing.stderr
        told = json_lines(vibrary("status", "--json", home=home).stdout)[0]["training"]
        assert (told["dataset"], told["state"], told["model"]) == ("mine", "cancelled", "")
        said = vibrary("status", home=home).stdout  # ended, not running ("training mine: cancelled (training …)")
        assert said.endswith("\nthe daemon's last training (mine): cancelled\n"), said
        assert sorted(m.version for m in c.models() if m.name == "mine") == [1, 2]

        # a daemon told to stop mid-training suspends it (its next start goes on with it), exits cleanly
        leaving = Client(home_dir=home)
        next(iter(leaving.train("mine", options=json.dumps({**AS_NEW, "epochs": 500, "patience": 500}))))
        leaving.close()
        wait_for(lambda: c.status().training.epoch >= 1, timeout=120)
        assert d.stop() == 0
        assert "Traceback" not in d.log()
    finally:
        listener.close()
        d.stop()
    d = start_daemon(home)
    try:
        assert sorted(m.version for m in d.client.models() if m.name == "mine") == [1, 2]
    finally:
        d.stop()
    kinds = {e.kind for e in events}
    assert {pb.Event.TRAINING_PROGRESS, pb.Event.TRAINING_FINISHED, pb.Event.MODEL_INSTALLED} <= kinds
    installed = [e.model for e in events if e.kind == pb.Event.MODEL_INSTALLED]
    assert installed == ["mine@1", "mine@2"]
    finished = [e.training.state for e in events if e.kind == pb.Event.TRAINING_FINISHED]
    cancelled = pb.TrainProgress.CANCELLED
    assert finished[:3] == [pb.TrainProgress.SUCCEEDED, pb.TrainProgress.SUCCEEDED, cancelled], finished


AS_NEW = {"epochs": 6, "known_pull": 0}  # `vibrary train --as-new`: epochs, even of tags the demo knows


def _train(c: Client, name: str, options: dict[str, int]) -> pb.TrainProgress:
    """Train through the API; while a training over epochs runs the daemon answers, reports it, and refuses a
    second job (a fit from known rows takes a second or two: no time to watch it)."""
    updates: list[pb.TrainProgress] = []
    runner = threading.Thread(target=lambda: updates.extend(c.train(name, options=options)))
    runner.start()
    epochs = options.get("epochs", 1)
    if epochs > 1:
        wait_for(lambda: c.status().training.state == pb.TrainProgress.TRAINING, timeout=120)
        assert _code(lambda: c.train(name)) == grpc.StatusCode.FAILED_PRECONDITION
        before = c.dataset(name)  # the dataset in training is neither rewritten nor deleted under it
        tag = before.classes[0].tag
        assert _code(lambda: c.edit_dataset(name, rename=[(tag, "renamed")])) == grpc.StatusCode.FAILED_PRECONDITION
        assert _code(lambda: c.delete_dataset(name)) == grpc.StatusCode.FAILED_PRECONDITION
        recreate = [("/nowhere.wav", "x")]  # refused before any file is read
        assert _code(lambda: c.create_dataset(name, recreate)) == grpc.StatusCode.FAILED_PRECONDITION
        assert c.dataset(name) == before
    runner.join(timeout=300)
    states = [u.state for u in updates]
    assert pb.TrainProgress.UPLOADING in states and pb.TrainProgress.TRAINING in states
    # forward only: it went TRAINING, epoch 0/0 "exporting", WAITING "done", then INSTALLING
    after = states[states.index(pb.TrainProgress.TRAINING) :]
    assert pb.TrainProgress.WAITING not in after, [(pb.TrainProgress.State.Name(u.state), u.message) for u in updates]
    trained = [(u.epoch, u.epochs) for u in updates[states.index(pb.TrainProgress.TRAINING) :]]
    assert trained == sorted(trained) and trained[-1] == (epochs, epochs), trained
    assert states[-1] == pb.TrainProgress.SUCCEEDED, updates[-1]
    assert c.status().training.state == pb.TrainProgress.SUCCEEDED
    assert max(u.uploaded_bytes for u in updates) == updates[-1].upload_bytes > 0
    done = updates[-1]  # 3 tags x 8 clips: none held out, and the API said "val 0.0" where the CLI had a figure
    # epochs, or a fit of known tags: on folds (of whole folders, where suggestions took a tag from several)
    held = [f.format(n) for f in (training.FOLDS_STAND_IN, training.FOLDS_HELD_OUT) for n in range(2, 6)]
    assert done.accuracy_of in held and done.val_accuracy > 0.3, done
    assert {Path(p).suffix for p in done.plots} == {".png"} and all(Path(p).is_file() for p in done.plots)
    return done


def test_training_that_cannot_start_fails_clearly_and_reports_it(home: Path, tmp_path: Path) -> None:
    from vibrary.daemon import training
    from vibrary.daemon.index import Index

    write_kinds(tmp_path / "ex", per_kind=2, seed=8)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    index = Index(config.index_path(home))
    cases: list[tuple[str, dict[str, str], str]] = [
        ("nope", {}, "no dataset 'nope'"),
        ("mine", {"trainer": "somewhere"}, "expected local, cloud or HOST:PORT"),
        ("mine", {"trainer": "https://gpubox:7878"}, "HOST:PORT alone, no scheme or path"),  # (a resolver error)
        ("mine", {"trainer": "127.0.0.1:1"}, "trainer at 127.0.0.1:1"),  # nobody listens there
        # refused before any trainer starts: the reason is the user's, not a trainer's or an install's
        ("mine", {"trainer": "127.0.0.1:1", "base": "nosuch"}, "base 'nosuch': expected demo"),
        ("mine", {"trainer": "127.0.0.1:1", "name": "my tags"}, "model name 'my tags'"),
    ]
    for name, how, reason in cases:
        seen: list[training.TrainProgress] = []
        with pytest.raises(training.TrainingError, match=reason):
            training.train(home, name, index=index, progress=seen.append, **how)
        assert seen[-1].state == "failed" and reason in seen[-1].error
    assert [m.name for m in index.models() if not m.builtin] == []
    index.close()
    usage = vibrary("train", "mine", "--base", "nosuch", home=home, check=False)
    assert usage.returncode == 2 and "--base: no 'nosuch': one of demo, none" in usage.stderr, usage.stderr
    # mistyped options: exit 1 after the dataset's advice before; now a usage error (2), said first and alone
    for option, reason in (
        (("--name", "My Model"), "model name 'My Model'"),
        (("--trainer", "lcoal"), "trainer 'lcoal'"),
    ):
        typo = vibrary("train", "mine", *option, home=home, check=False)
        assert typo.returncode == 2 and typo.stderr.startswith(f"vibrary: {reason}"), typo.stderr
        assert len(typo.stderr.splitlines()) == 1, typo.stderr  # no advice line, no progress


def test_a_bug_in_a_training_job_ends_it_visibly_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    from vibrary.daemon import training

    def broken(job: training.Background) -> None:
        raise RuntimeError("boom")

    job = training.Background("mine", broken)
    job.join(timeout=10)
    assert job.finished and job.progress.state == "failed" and job.progress.error == "internal error: boom"
    assert "training on mine failed unexpectedly" in caplog.text and "RuntimeError: boom" in caplog.text


def test_a_slow_follower_of_a_training_sees_every_state_it_passed() -> None:
    """A small upload is over in milliseconds: a front end that read its stream later saw WAITING then
    TRAINING, never UPLOADING (a CI run on a loaded host)."""
    from vibrary.daemon import training

    go = threading.Event()

    def quick(job: training.Background) -> None:
        go.wait(10)
        for state, epoch in (("uploading", 0), ("uploading", 0), ("waiting", 0), ("training", 1), ("training", 2)):
            job.update(training.TrainProgress(dataset="mine", state=state, epoch=epoch))
        job.update(training.TrainProgress(dataset="mine", state="succeeded", epoch=2))

    job = training.Background("mine", quick)
    follower = job.follow()
    assert next(follower).state == "waiting"  # the state it joined in
    go.set()
    job.join(timeout=10)  # every change made before the follower reads again
    seen = [(p.state, p.epoch) for p in follower]
    assert seen == [("uploading", 0), ("waiting", 0), ("training", 2), ("succeeded", 2)]
    assert [p.state for p in job.follow()] == ["succeeded"]  # one joining later sees where it ended


NO_TORCH = """import sys


class NoTorch:  # as an installation without the trainer extra
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")


sys.meta_path.insert(0, NoTorch())
"""


def test_a_daemon_without_pytorch_refuses_local_training_at_once(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Train stream went WAITING, then FAILED, and ended with status OK: a front end had to read the
    stream to learn what other refusals say at once."""
    blocker = tmp_path / "no-torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TORCH)
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    files = [(str(f), f.parent.name) for f in write_kinds(tmp_path / "ex", per_kind=2, seed=9)]
    d = start_daemon(home)
    try:
        assert list(d.client.create_dataset("mine", files))[-1].dataset.clips == 6
        assert _code(lambda: list(d.client.train("mine"))) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(DaemonError, match=r"the local trainer needs PyTorch \(torch is missing\)"):
            list(d.client.train("mine"))
    finally:
        d.stop()


def test_a_dataset_being_built_is_not_trained_on_and_other_datasets_are(home: Path, tmp_path: Path) -> None:
    from vibrary.daemon.service import Daemon, TrainingBusy

    files = [(str(f), f.parent.name) for f in write_kinds(tmp_path / "ex", per_kind=2, seed=9)]
    config.Settings(settle_s=0.2, nice=0).save(home)  # in this process: pytest's own priority stays
    d = Daemon(home)
    d.start()
    try:
        d.create_dataset("mine", files, lambda n: None)
        d.create_dataset("other", files, lambda n: None)
        halfway, release = threading.Event(), threading.Event()

        def slow_progress(n: int) -> None:
            halfway.set()
            release.wait(30)

        rebuild = threading.Thread(target=lambda: d.create_dataset("mine", files, slow_progress, replace=True))
        rebuild.start()
        assert halfway.wait(30)
        with pytest.raises(TrainingBusy, match="'mine' is being built or edited"):
            d.start_training("mine")
        with pytest.raises(dataset.Busy, match="'mine' is being built or edited; try again"):
            d.edit_dataset("other", drop=["noise"])  # refused at once: it waited, silent, for the whole build
        job = d.start_training("other", trainer="127.0.0.1:1")  # another dataset: not held up by the build
        job.join(timeout=30)
        assert job.progress.state == "failed" and "127.0.0.1:1" in job.progress.error
        release.set()
        rebuild.join(timeout=30)
        assert dataset.load_report(home, "mine").manifest.clips == 6
    finally:
        release.set()
        d.stop()


def test_a_dataset_in_its_first_build_is_said_to_be_built_not_absent(home: Path, tmp_path: Path) -> None:
    """An edit or a look at a dataset whose first build runs answered "no dataset", which sent people to
    make it again."""
    from vibrary.daemon.server import serve
    from vibrary.daemon.service import Daemon

    files = [(str(f), f.parent.name) for f in write_kinds(tmp_path / "ex", per_kind=2, seed=9)]
    config.Settings(settle_s=0.2, nice=0).save(home)  # in this process: pytest's own priority stays
    d = Daemon(home)
    d.start()
    servers, _ = serve(d, str(config.socket_path(home)))
    halfway, release = threading.Event(), threading.Event()

    def slow_progress(n: int) -> None:
        halfway.set()
        release.wait(30)

    build = threading.Thread(target=d.create_dataset, args=("fresh", files, slow_progress))
    try:
        build.start()
        assert halfway.wait(30)
        with Client(home_dir=home) as c:
            for call in (lambda: c.edit_dataset("fresh", drop=["noise"]), lambda: c.dataset("fresh")):
                with pytest.raises(
                    DaemonError, match="dataset 'fresh' is being built or deleted; try when it is done"
                ) as e:
                    call()
                assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert _code(lambda: c.dataset("never")) == grpc.StatusCode.NOT_FOUND
    finally:
        release.set()
        build.join(timeout=30)
        for server in servers:
            server.stop(grace=0)
        d.stop()


def test_an_edit_cut_off_by_a_crash_leaves_the_old_dataset_or_the_new_never_a_mix(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_kinds(tmp_path / "ex", per_kind=3, seed=11)
    dataset.build(home, "mine", dataset.examples_from_folders([str(tmp_path / "ex")]))
    real_write = dataset.atomic.write

    def crash_at(name: str) -> Callable[[Path, bytes | str], None]:
        def write(path: Path, data: bytes | str, mode: int = 0o666) -> None:
            if path.name == name:
                raise OSError("power cut")
            real_write(path, data, mode)

        return write

    def consistent() -> list[str]:
        manifest, shard_dir = dataset.load(home, "mine")
        report = dataset.load_report(home, "mine")
        assert sorted(report.per_class) == list(manifest.classes) and manifest.clips == 9
        assert all((shard_dir / f"{s.sha256}.npz").exists() for s in manifest.shards)
        return list(manifest.classes)

    monkeypatch.setattr(dataset.atomic, "write", crash_at("labels.json"))  # before the commit point
    with pytest.raises(OSError, match="power cut"):
        dataset.edit(home, "mine", rename=[("noise", "hiss")])
    assert consistent() == ["noise", "thump", "tone"]
    monkeypatch.setattr(dataset.atomic, "write", crash_at("manifest.json"))  # after it
    with pytest.raises(OSError, match="power cut"):
        dataset.edit(home, "mine", rename=[("noise", "hiss")])
    assert consistent() == ["hiss", "thump", "tone"]


def test_a_file_listed_twice_is_one_example_and_two_tags_for_it_are_refused(home: Path, tmp_path: Path) -> None:
    files = write_kinds(tmp_path / "ex", per_kind=2, seed=12)
    twice = [dataset.example(str(f), f.parent.name) for f in files + files]
    assert dataset.build(home, "mine", twice).manifest.clips == len(files)
    clash = [*twice, dataset.example(str(files[0]), "other")]
    with pytest.raises(ValueError, match=r"tagged both '\w+' and 'other'"):
        dataset.build(home, "clash", clash)
    assert dataset.names(home) == ["mine"]


def _full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def test_a_trained_model_that_cannot_be_installed_is_kept_to_install_by_hand(
    model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's files were lost when the install failed (a full disk): the cloud had already deleted
    its copy, so a paid-for training was gone. The model is kept, and the error says how to install it."""
    from vibrary.daemon import registry

    model = band_model(tmp_path / "mine.onnx", name="mine").read_bytes()
    files = {"model.onnx": model, "summary.json": b"{}", "learning_curve.png": b"png", "../../escaped": b"x"}
    index = Index(config.index_path(model_home))
    try:
        with monkeypatch.context() as full:
            full.setattr(registry, "install", _full_disk)
            with pytest.raises(training.TrainingError, match=r"No space left.*the model is kept") as e:
                report = training._Report("ds", lambda p: None)
                training._installed(index, model_home, files, "mine", report, threading.Event())
        kept = re.search(r"`vibrary models install (\S+) --name mine`", str(e.value))
        assert kept and Path(kept.group(1)).read_bytes() == model
        # the names a (remote) trainer sent are not paths to write to: only the files a model has are kept
        assert sorted(p.name for p in Path(kept.group(1)).parent.iterdir()) == ["learning_curve.png", "model.onnx"]
        assert not list(model_home.rglob("escaped"))
    finally:
        index.close()
    vibrary("models", "install", kept.group(1), "--name", "mine", home=model_home)
    assert "mine@1" in vibrary("models", "list", home=model_home).stdout


def test_a_model_hardly_better_than_guessing_is_said_to_be() -> None:
    """A `--base none` model right on 50 % of two tags' clips was installed and activated with no word of it."""
    from vibrary.clients.training_commands import as_good_as_chance

    assert "about as good as guessing (50% for 2 tags)" in as_good_as_chance(0.5, 2)
    assert as_good_as_chance(0.55, 2) and not as_good_as_chance(0.6, 2) and not as_good_as_chance(0.9, 2)
    assert as_good_as_chance(0.3, 4) and not as_good_as_chance(0.4, 4)  # 25 % a guess


def test_suggestions_that_mix_effects_with_sounds_are_said(home: Path, tmp_path: Path) -> None:
    """An effects library's suggestions came out as effects, instruments and fx in one dataset, and the model
    trained on them knew none of its tags: a file gets one tag, so a reverb kick is taught as either."""
    write_tone(tmp_path / "mix" / "FX" / "Reverb" / "take1.wav", 400.0, 0.3)
    write_tone(tmp_path / "mix" / "FX" / "Reverb" / "take2.wav", 500.0, 0.3)
    write_tone(tmp_path / "mix" / "Drums" / "Kick 01.wav", 60.0, 0.3)
    write_tone(tmp_path / "mix" / "Drums" / "Kick 02.wav", 70.0, 0.3)
    made = vibrary("dataset", "create", "mixed", str(tmp_path / "mix"), "--labels", "suggest", home=home)
    assert "these tags mix effects (reverb) with sounds (kick)" in made.stderr, made.stderr
    fx_only = str(tmp_path / "mix" / "FX")  # (one tag: refused, but said without the mix)
    alone = vibrary("dataset", "create", "fx", fx_only, "--labels", "suggest", home=home, check=False)
    assert "mix effects" not in alone.stderr


def test_names_a_front_end_sends_decomposed_are_the_names_kept(home: Path, tmp_path: Path) -> None:
    """The CLI composes names (NFC) as it reads them; the API did not: a front end on macOS, passing a name
    taken from a file name, decomposed, got NOT_FOUND for an installed model, and made a second dataset of
    the same name that the CLI could not reach."""
    import unicodedata

    composed = "stimmung_ä"
    decomposed = unicodedata.normalize("NFD", composed)
    files = [(str(f), f.parent.name) for f in write_kinds(tmp_path / "ex", per_kind=2, seed=9)]
    d = start_daemon(home)
    try:
        c = d.client
        assert list(c.create_dataset(decomposed, files))[-1].dataset.name == composed
        assert [s.name for s in c.datasets()] == [composed]
        assert c.dataset(decomposed).clips == c.dataset(composed).clips == 6
        assert list(c.create_dataset(composed, files[:2], add=True))[-1].dataset.clips == 6  # the same one
        c.install_model(str(band_model(tmp_path / "m.onnx")), name=composed)
        assert [m.active for m in c.deactivate(decomposed) if m.name == composed] == [False]
        assert [m.active for m in c.activate(decomposed, 1) if m.name == composed] == [True]
        ended = list(c.train(decomposed, name=decomposed, trainer="127.0.0.1:1"))[-1]
        assert (ended.state, ended.dataset) == (pb.TrainProgress.FAILED, composed) and "127.0.0.1:1" in ended.error
        assert [s.name for s in c.delete_dataset(decomposed)] == []
    finally:
        d.stop()
