"""The `vibrary` command line as scripts and the evaluation drive it (shared/interfaces.md)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from vibrary.clients.query import QueryError, parse_query
from vibrary.daemon import config
from vibrary.daemon.index import Index

from tests.conftest import DaemonProcess, home_held, json_lines, start_daemon, vibrary, wait_for
from tests.synth import BANDS, band_model, write_tone


def test_tag_json_contract(model_home: Path, tmp_path: Path) -> None:
    for band, freq in BANDS.items():
        write_tone(tmp_path / "kit" / f"{band}.wav", freq)
    (tmp_path / "kit" / "broken.wav").write_text("not audio")
    (tmp_path / "kit" / "readme.txt").write_text("skipped: not audio")
    proc = vibrary("tag", "--json", str(tmp_path / "kit"), str(tmp_path / "gone.wav"), home=model_home)
    lines = {Path(x["path"]).name: x for x in json_lines(proc.stdout)}
    assert set(lines) == {"low.wav", "mid.wav", "high.wav", "broken.wav", "gone.wav"}
    for band in BANDS:
        line = lines[f"{band}.wav"]
        assert line["error"] is None and line["tags"][0] == {**line["tags"][0], "model": "bands", "tag": band}
        scores = [t["score"] for t in line["tags"]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 3
        assert [t["tag"] for t in line["tags"] if t["hit"]] == [band]
    assert lines["broken.wav"]["tags"] == [] and "not a recognised audio format" in lines["broken.wav"]["error"]
    assert lines["gone.wav"]["error"] == "no such file or folder"  # named, never there: not "deleted or moved"
    assert lines["low.wav"]["path"] == str(tmp_path / "kit" / "low.wav")


def test_a_files_line_marks_the_tags_it_has_among_the_scores_kept_beside() -> None:
    """A script that checked "no result carries the tag I excluded" read the low scores kept beside a file's
    tags as matches: `hit` marks what a search finds, its model's best tag or a score of at least 0.5."""
    from vibrary.clients.output import _file_line

    tags = [("inst", "kick", 0.62), ("inst", "tom", 0.51), ("inst", "snare", 0.3), ("mood", "dark", 0.2)]
    tags += [("mood", "warm", 0.1), ("mine", "wobble", 0.9)]
    line = _file_line("/x.wav", tags, None, unfamiliar={"mine"})
    assert {t["tag"]: t["hit"] for t in line["tags"]} == {
        "kick": True,
        "tom": True,  # at least 0.5
        "snare": False,
        "dark": True,  # its model's best
        "warm": False,
        "wobble": False,  # a guess: its model finds the file like none of its examples
    }


def test_tag_and_train_write_nothing_outside_the_home(model_home: Path, tmp_path: Path) -> None:
    """onnxruntime kept a device id and an event store (sent to Microsoft) in ~/.cache, matplotlib its font
    cache there too: everything Vibrary writes lives in its home (shared/interfaces.md), and nothing is sent."""
    from tests.synth import write_kinds

    user = tmp_path / "user"
    user.mkdir()
    (tmp_path / "tmp").mkdir()  # torch's bfloat16 steps on a CPU made /tmp/torchinductor_<user>
    unset = ("ORT_DISABLE_TELEMETRY", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCHINDUCTOR_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"HOME": str(user), "VIBRARY_HOME": str(model_home)}
    env["TMPDIR"] = str(tmp_path / "tmp")
    write_kinds(tmp_path / "ex", per_kind=2, seed=3)
    for command in (
        ["tag", "--json", str(tmp_path / "ex")],
        ["dataset", "create", "kinds", str(tmp_path / "ex")],
        ["train", "kinds", "--base", "none", "--epochs", "1"],  # (its plots: matplotlib's font cache)
    ):
        cli = [sys.executable, "-m", "vibrary.clients.cli", *command]
        subprocess.run(cli, env=env, check=True, capture_output=True, timeout=300)
    assert sorted(user.rglob("*")) == [] and sorted((tmp_path / "tmp").rglob("*")) == []
    assert list(model_home.glob("trainer/matplotlib/fontlist*"))


def test_tag_json_says_the_files_in_the_order_given(model_home: Path, tmp_path: Path) -> None:
    """Files are read in parallel: the lines came in the order the reads ended, and a script pairing its paths
    with the lines (or comparing two runs) read one file's tags as another's. Long and short files alternate
    here, so that reads end out of order."""
    paths = []
    for i in range(24):
        seconds = 3.0 if i % 2 else 0.1
        paths.append(str(write_tone(tmp_path / f"f{(i * 7) % 24:02d}.wav", 200 + 30 * i, seconds=seconds)))
    proc = vibrary("tag", "--json", *paths, home=model_home)
    assert [line["path"] for line in json_lines(proc.stdout)] == paths


def test_tag_follows_linked_folders_in_a_folder_once_each(model_home: Path, tmp_path: Path) -> None:
    """A folder linked into the one given (`Samples/Vendor -> /mnt/drive/Vendor`) had none of its files said,
    not a word on stderr, where the link given itself was tagged; a loop, or a second link to one folder, is
    walked once."""
    elsewhere = tmp_path / "drive" / "Vendor"
    elsewhere.mkdir(parents=True)
    write_tone(elsewhere / "pad.wav", 300.0)
    tree = tmp_path / "Samples"
    write_tone(tree / "Own" / "kick.wav", 60.0)
    (tree / "Vendor").symlink_to(elsewhere)
    (tree / "Vendor again").symlink_to(elsewhere)
    (tree / "Own" / "loop").symlink_to(tree)
    proc = vibrary("tag", "--json", str(tree), home=model_home)
    said = [line["path"] for line in json_lines(proc.stdout)]
    assert said == [str(tree / "Own" / "kick.wav"), str(tree / "Vendor" / "pad.wav")], said


def test_a_folder_named_with_control_characters_reaches_the_terminal_escaped(model_home: Path, tmp_path: Path) -> None:
    """Some lines on stderr printed a folder's name as it was: one named with an escape sequence set the
    terminal's title (or recoloured it) when `vibrary tag` said it held no audio."""
    evil = tmp_path / "Pack \x1b]0;pwned\x07"
    evil.mkdir()
    said = vibrary("tag", str(evil), home=model_home).stderr
    assert "no audio files in" in said and "\x1b" not in said and "\x07" not in said, said


def test_a_folder_with_no_audio_gets_its_own_line(model_home: Path, tmp_path: Path) -> None:
    """`vibrary tag --json TEXTS/ kick.wav EMPTY/` said one line, of kick.wav, and nothing of the folders: a script
    could not tell a folder with nothing to tag from one it forgot to ask for."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("no audio here")
    (tmp_path / "empty").mkdir()
    kick = write_tone(tmp_path / "kick.wav", 60.0)
    snare = write_tone(tmp_path / "locked" / "snare.wav", 200.0)
    (tmp_path / "locked").chmod(0)  # (a folder macOS keeps from a program without Full Disk Access)
    asked = [str(tmp_path / "texts"), str(kick), str(tmp_path / "locked"), str(tmp_path / "empty"), str(tmp_path)]
    try:
        run = vibrary("tag", "--json", *asked, home=model_home)
    finally:
        (tmp_path / "locked").chmod(0o755)
    lines = json_lines(run.stdout)
    assert [line["path"] for line in lines] == asked[:4]  # in the order asked: tmp_path's kick was said already
    assert lines[0]["error"] == lines[3]["error"] == "no audio files in this folder"
    assert lines[1]["error"] is None and lines[1]["tags"]
    assert lines[2]["error"] == "no audio files read: it, or a folder in it, cannot be read (Permission denied)"
    # once for each path it is under (itself, tmp_path): a folder with no audio was walked twice
    assert run.stderr.count(f"cannot read folder {snare.parent}") == 2, run.stderr
    alone = vibrary("tag", "--json", asked[3], home=model_home).stdout  # (nothing at all to tag: the same line)
    assert json_lines(alone) == [lines[3]]
    (tmp_path / "link").symlink_to(snare.parent)  # its file named first by another spelling: no "no audio" line
    again = vibrary("tag", "--json", str(tmp_path / "link" / "snare.wav"), str(snare.parent), home=model_home)
    assert [line["path"] for line in json_lines(again.stdout)] == [str(tmp_path / "link" / "snare.wav")]


def test_a_mistake_the_parser_catches_is_a_json_line_too(home: Path) -> None:
    """`search --limit 0 --json` printed argparse's usage on stderr and nothing on stdout, where the same
    script got `{"error": …}` for a mistake the command itself caught."""
    mistakes = [["search", "kick", "--limit", "0"], ["nosuchcmd"], ["tag", "--top", "0", "x.wav"]]
    mistakes += [["trainer", "health", "--timeout", t] for t in ("0", "-1", "inf", "nan")]  # (a healthy one failed)
    named = [["models", "install", "--name", "bad name", "x.onnx"], ["tag", "--model", "bad name!", "x.wav"]]
    for args in [*mistakes, *named, ["counts", "--model", "a/b"]]:  # (no model can be so named: not "no such model")
        proc = vibrary(*args, "--json", home=home, check=False)
        (line,) = json_lines(proc.stdout)
        assert proc.returncode == 2 and line["exit_status"] == 2 and "--help` says more" in line["error"], args
        assert proc.stderr.startswith("usage: vibrary") and f"vibrary: {line['error']}" in proc.stderr
    plain = vibrary("search", "kick", "--limit", "0", home=home, check=False)
    assert plain.returncode == 2 and plain.stdout == ""
    for command, args in (("search", ["--bogus", "kick"]), ("models list", ["--bogus"])):  # said by `vibrary`:
        unknown = vibrary(*command.split(), *args, home=home, check=False)  # its usage, and `vibrary --help`
        assert unknown.returncode == 2 and unknown.stderr.startswith(f"usage: vibrary {command} "), unknown.stderr
        assert f"unrecognized arguments: --bogus (`vibrary {command} --help` says more)" in unknown.stderr
    for typo, said in (  # argparse's "argument action: invalid choice: 'sotp' (choose from …)", no did-you-mean
        (["serch", "kick"], "no 'serch' (did you mean 'search'?): one of tag, daemon, watch,"),
        (["daemon", "sotp"], "no 'sotp' (did you mean 'stop'?): one of start, stop (`vibrary daemon --help`"),
        (["dataset", "create", "x", "y", "--labels", "fold"], "--labels: no 'fold' (did you mean 'folders'?):"),
    ):
        assert said in vibrary(*typo, home=home, check=False).stderr


def test_a_newline_in_a_file_name_keeps_the_file_on_one_human_line(model_home: Path, tmp_path: Path) -> None:
    """A name may hold a newline; printed as it is, it split the file's line in two (--json keeps it). A name
    with a backslash and an n, which a Windows share or a script can make, is not printed as that newline."""
    write_tone(tmp_path / "kit" / "two\nlines.wav", BANDS["low"])
    write_tone(tmp_path / "kit" / "plain.wav", BANDS["high"])
    write_tone(tmp_path / "kit" / "back\\nslash.wav", BANDS["high"])
    human = vibrary("tag", str(tmp_path / "kit"), home=model_home).stdout.splitlines()
    assert len(human) == 3 and any(line.startswith(f"$'{tmp_path}/kit/two\\nlines.wav': low") for line in human)
    assert any(line.startswith(f"{tmp_path}/kit/back\\nslash.wav: high") for line in human), human
    # the same file otherwise spelled or through a link: one line, as the same spelling was; `link/..` is beside
    # where the link leads (read as the folder the link is in, another file was left out)
    (tmp_path / "alias").symlink_to(tmp_path / "kit", target_is_directory=True)
    (tmp_path / "ln").symlink_to(tmp_path / "other" / "deep", target_is_directory=True)
    write_tone(tmp_path / "other" / "deep" / "y.wav", BANDS["mid"])
    beside = write_tone(tmp_path / "other" / "plain.wav", BANDS["mid"])
    again = [f"{tmp_path}/kit/./plain.wav", f"{tmp_path}/alias/plain.wav", f"{tmp_path}/ln/../plain.wav"]
    (tmp_path / "linked.wav").symlink_to(tmp_path / "kit" / "plain.wav")  # a file of its own, as the index has it
    others = [str(tmp_path / "linked.wav"), str(tmp_path / "nowhere.wav")]  # (the one not there said so)
    as_json = json_lines(vibrary("tag", "--json", str(tmp_path / "kit"), *again, *others, home=model_home).stdout)
    assert len(as_json) == 6 and {x["path"] for x in as_json} == {
        str(tmp_path / "kit" / "two\nlines.wav"),
        str(tmp_path / "kit" / "plain.wav"),
        str(tmp_path / "kit" / "back\\nslash.wav"),
        f"{tmp_path}/ln/../plain.wav",
        *others,
    }
    assert [x["tags"][0]["tag"] for x in as_json if x["path"].endswith("ln/../plain.wav")] == ["mid"], beside


def test_a_name_with_control_characters_is_quoted_to_paste_into_bash() -> None:
    """A name with a newline printed as `\\n` read as one with a backslash and an n; bash's $'…' names the file
    itself (a C1 character as a character: \\x85 in it is a byte, not U+0085)."""
    from vibrary.clients.output import _shown

    for name in ("/lib/two\nlines.wav", "/lib/tab\there.wav", "/lib/c1\x85x.wav", "/lib/q'uote\\n\x1b[31m.wav"):
        quoted = _shown(name)
        assert quoted.startswith("$'") and "\n" not in quoted and "\x1b" not in quoted, quoted
        for locale in ("C", "C.UTF-8"):  # (\u0085 is the character only where the locale is UTF-8)
            env = {**os.environ, "LC_ALL": locale}
            pasted = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True, env=env)
            assert pasted.stdout == name.encode(), (locale, quoted, pasted.stdout)
    assert _shown("/lib/back\\nslash.wav") == "/lib/back\\nslash.wav"  # (no control character: as it is)


def test_which_commands_run_on_with_their_output_closed() -> None:
    """`daemon --json stop` stopped the daemon with its output lost and ended 0; `daemon --token stop` (a token
    "stop") is a daemon."""
    from vibrary.clients.cli import build_parser
    from vibrary.clients.entry import _quiet

    on = (["daemon"], ["daemon", "--token", "stop"], ["--json", "tray"], ["trainer", "serve", "--data", "x"])
    off = (["daemon", "stop"], ["daemon", "--json", "stop"], ["daemon", "--workers", "2", "stop"], ["tag", "x.wav"])
    assert [_quiet(list(a)) for a in on] == [True] * 4 and [_quiet(list(a)) for a in off] == [False] * 4
    assert _quiet(["daemon", "start"]) and build_parser().parse_args(["daemon", "start"]).action == "start"  # (a guess)


@pytest.mark.parametrize("closed", [1, 2])
def test_a_command_started_with_its_output_or_its_errors_closed(model_home: Path, tmp_path: Path, closed: int) -> None:
    """`vibrary tag --json F 2>&-` (a launcher that closes what it does not read) printed nothing and ended 1:
    the progress bar raised on no stderr; `>&-` ended 0, its results gone. The closed number is held on
    /dev/null: the next file opened took it, and what went to the stream went into that file."""
    clip = write_tone(tmp_path / "low.wav", BANDS["low"])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "import sys; from vibrary.clients.entry import main; sys.exit(main())", *args],
            env={**os.environ, "VIBRARY_HOME": str(model_home)},
            stdout=subprocess.PIPE if closed == 2 else subprocess.DEVNULL,
            stderr=subprocess.PIPE if closed == 1 else subprocess.DEVNULL,
            preexec_fn=lambda: os.close(closed),
            text=True,
            timeout=120,
        )

    tagged = run("tag", "--json", str(clip))
    if closed == 2:
        assert tagged.returncode == 0 and json_lines(tagged.stdout)[0]["tags"][0]["tag"] == "low", tagged
        for tag in ("low", "high"):
            write_tone(tmp_path / "tags" / tag / "a.wav", BANDS[tag])
            write_tone(tmp_path / "tags" / tag / "b.wav", BANDS[tag] * 1.1)
        loose = write_tone(tmp_path / "tags" / "loose.wav", BANDS["mid"])
        os.rename(bytes(loose), bytes(tmp_path / "tags") + b"/loose\xe9.wav")
        made = run("dataset", "create", "d", str(tmp_path / "tags"))  # its warning names the loose file: it failed
        assert made.returncode == 0 and "4 clips" in made.stdout, made
    else:
        assert tagged.returncode == 1 and "standard output is closed" in tagged.stderr, tagged
        stopped = run("daemon", "stop")  # what it stopped is its output (a daemon itself runs on without one)
        assert stopped.returncode == 1 and "standard output is closed" in stopped.stderr, stopped


def test_a_file_silent_in_its_opening_seconds_is_tagged_by_its_first_sound(model_home: Path, tmp_path: Path) -> None:
    """A stem that starts after 4 s of digital silence came out with the model's guess for nothing as its
    best tag (stop 22: then with no tags at all, never found); it is tagged by its first sound, a 1.4 kHz
    tone: mid. A file silent throughout has no tags, and its line says why; a file with sound in its opening
    seconds is tagged."""
    import numpy as np
    import soundfile as sf

    late = np.concatenate([np.zeros(4 * 44100, np.float32), np.sin(np.arange(44100, dtype=np.float32) / 5)])
    sf.write(tmp_path / "late.wav", late, 44100, subtype="PCM_24")
    sf.write(tmp_path / "silent.wav", np.zeros(6 * 44100, np.float32), 44100, subtype="PCM_24")
    write_tone(tmp_path / "low.wav", BANDS["low"])
    names = ("late.wav", "silent.wav", "low.wav")
    proc = vibrary("tag", "--json", *(str(tmp_path / n) for n in names), home=model_home)
    lines = {Path(x["path"]).name: x for x in json_lines(proc.stdout)}
    assert lines["late.wav"]["tags"][0]["tag"] == "mid" and lines["late.wav"]["error"] is None
    assert lines["silent.wav"] == {**lines["silent.wav"], "tags": [], "error": None}
    assert lines["silent.wav"]["note"] == "no tags: no sound above -70 dBFS in its first minute"  # not "not read"
    assert lines["low.wav"]["tags"][0]["tag"] == "low" and "note" not in lines["low.wav"]
    said = vibrary("tag", str(tmp_path / "silent.wav"), home=model_home).stdout
    assert "silent.wav: (no tags: no sound above -70 dBFS in its first minute)" in said


def test_json_is_taken_wherever_it_is_given(model_home: Path) -> None:
    """`vibrary --json models list`, `vibrary models --json list` and `vibrary models list --json` alike."""
    for args in (("--json", "models", "list"), ("models", "--json", "list"), ("models", "list", "--json")):
        lines = json_lines(vibrary(*args, home=model_home).stdout)
        assert "bands" in {line["name"] for line in lines}, args


def test_every_models_json_line_names_the_model_as_model(model_home: Path) -> None:
    """`models list --json` said `name` where install, activate, deactivate, remove and train say `model`:
    `model` now everywhere, and list keeps `name` beside it for the scripts that read it."""
    listed = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    assert {(m["model"], m["name"]) for m in listed} == {("bands", "bands"), ("demo", "demo")}
    for action in ("activate", "deactivate"):
        (line,) = json_lines(vibrary("models", action, "--json", "bands", home=model_home).stdout)
        assert line["model"] == "bands", line


def test_tag_with_a_named_model_and_top(model_home: Path, tmp_path: Path) -> None:
    other = band_model(tmp_path / "v2.onnx", name="bands", version=2, shift=1)
    vibrary("models", "install", "--inactive", str(other), home=model_home)
    clip = write_tone(tmp_path / "low.wav", BANDS["low"])
    v1 = json_lines(vibrary("tag", "--json", "--top", "1", str(clip), home=model_home).stdout)[0]
    v2 = json_lines(vibrary("tag", "--json", "--model", "bands@2", str(clip), home=model_home).stdout)[0]
    assert [t["tag"] for t in v1["tags"]] == ["low"]
    assert v2["tags"][0]["tag"] == "mid"
    named = json_lines(vibrary("tag", "--json", "--model", "bands", str(clip), home=model_home).stdout)[0]
    assert named["tags"][0]["tag"] == "low"  # the active version (1), not the newest (2): a rollback stands
    bad = vibrary("tag", "--model", "nope", str(clip), home=model_home, check=False)
    assert bad.returncode == 1 and "no model nope" in bad.stderr
    again = vibrary("models", "install", str(other), home=model_home)  # undoes the rollback: said so
    assert "already installed as bands@2 (3 classes); active now in place of bands@1" in again.stdout
    listed = vibrary("models", "list", home=model_home).stdout
    assert "* bands@2" in listed and "tags: low, mid, high" in listed  # the words a search can ask for
    assert re.search(r"installed 20\d\d-\d\d-\d\d \d\d:\d\d; tags", listed)  # versions told apart


def test_usage_errors_exit_2_and_failures_exit_1(home: Path, tmp_path: Path) -> None:
    assert vibrary("tag", home=home, check=False).returncode == 2
    assert vibrary("frobnicate", home=home, check=False).returncode == 2
    missing = vibrary("trainer", "token", home=home, check=False)  # it named our variable, token_action
    assert missing.returncode == 2 and "required: {add,remove,list}" in missing.stderr, missing.stderr
    no_daemon = vibrary("status", "--json", home=home, check=False)
    assert no_daemon.returncode == 1 and "vibrary daemon" in no_daemon.stderr
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    bad = vibrary("models", "install", str(tmp_path / "x.onnx"), home=home, check=False)
    assert bad.returncode == 1 and "not a loadable ONNX model" in bad.stderr
    for args, said in (  # usage errors found past argparse exit 2 as well, before any daemon is asked
        (("search",), "give at least one tag"),
        (("search", " "), "give at least one tag"),  # a blank "$TAG": it listed the whole library
        (("search", "kick NOT"), "NOT needs a tag after it"),  # quoted: an error once split, said before asking
        (("search", "OR"), "OR needs a tag on each side"),
        (("search", "kick", "NOT"), "NOT needs a tag after it"),
        (("search", "kick", "OR", "-snare", "hihat"), "not an excluded one"),  # was (kick|hihat) -snare
        (("search", "kick", "--min-score", "2"), "scores lie between 0 and 1"),
        (("models", "remove", "demo@0"), "versions count from 1"),  # was: remove the newest version
        (("models", "activate", "demo@"), "versions count from 1"),
        (("models", "activate", "demo@abc"), "versions count from 1"),
        (("tag", "--model", "@1", str(tmp_path)), "expected NAME or NAME@VERSION"),
    ):
        refused = vibrary(*args, home=home, check=False)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
    far = tmp_path / ("x" * 120)  # no socket can live there: said plainly, not in gRPC's words
    far.mkdir()
    for args in (("status",), ("daemon",)):
        told = vibrary(*args, home=far, check=False)
        assert told.returncode == 1 and "set VIBRARY_HOME to a shorter folder" in told.stderr, (args, told.stderr)


def test_paths_the_index_cannot_take_are_said_plainly(daemon: DaemonProcess, tmp_path: Path) -> None:
    clip = write_tone(tmp_path / "a.wav", BANDS["low"])
    lib, elsewhere = tmp_path / "lib", tmp_path / "elsewhere"
    lib.mkdir()
    elsewhere.mkdir()
    (lib / "readme.pdf").write_text("read me\n")
    (lib / "._a.wav").write_bytes(bytes(82))  # macOS's metadata beside an a.wav
    (lib / "Linked").symlink_to(elsewhere)  # watches do not follow it
    daemon.client.add_watch(str(lib))
    asked = [tmp_path / "gone.wav", clip, lib / "readme.pdf", lib / "._a.wav", lib / "Linked"]
    told = json_lines(vibrary("tags", "--json", *map(str, asked), home=daemon.home).stdout)
    outside = "not under a watch folder (`vibrary watch add` one above it, or `vibrary tag` reads it now)"
    not_audio = "not an audio file that Vibrary reads"  # all of them "not in the index"
    link = "a link to a folder elsewhere: watches do not follow links (`vibrary watch add` where it leads)"
    mac = "macOS's metadata beside a file (`._NAME`), not audio: never indexed"
    assert [t["error"] for t in told] == ["no such file or folder", outside, not_audio, mac, link]
    latin1 = os.path.join(os.fsencode(tmp_path), b"Caf\xe9")
    os.mkdir(latin1)
    refused = vibrary("watch", "add", os.fsdecode(latin1), home=daemon.home, check=False)
    assert refused.returncode == 1 and "is not valid UTF-8: rename it" in refused.stderr, refused.stderr
    not_folder = vibrary("watch", "add", str(clip), home=daemon.home, check=False)
    assert not_folder.returncode == 1 and not_folder.stderr.strip() == f"vibrary: not a folder: {clip}"
    trashed = tmp_path / "drive" / ".Trash-1000" / "files" / "Old Kicks"
    trashed.mkdir(parents=True)  # watched, it was never scanned, silently
    refused = vibrary("watch", "add", str(trashed), home=daemon.home, check=False)
    in_trash = f"vibrary: {trashed} is in a trash or system folder, which are never indexed: move the samples out"
    assert refused.returncode == 1 and refused.stderr.startswith(in_trash), refused.stderr
    assert str(trashed) not in daemon.client.watches()


def test_a_model_name_typed_decomposed_is_the_model_so_named(model_home: Path, tmp_path: Path) -> None:
    """`stimmung_ä` typed or pasted decomposed (NFD, as macOS spells file names) was refused as no name at all
    ("use letters, digits"), or installed as a second model beside the composed one."""
    import unicodedata

    composed, decomposed = "stimmung_ä", unicodedata.normalize("NFD", "stimmung_ä")
    assert composed != decomposed
    vibrary("models", "install", "--name", decomposed, str(band_model(tmp_path / "m.onnx")), home=model_home)
    listed = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    assert [m["name"] for m in listed if m["name"].startswith("stim")] == [composed]
    assert vibrary("models", "deactivate", decomposed, "--json", home=model_home).stdout.count('"changed": true')
    vibrary("models", "activate", f"{decomposed}@1", home=model_home)
    assert [
        m["active"]
        for m in json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
        if m["name"] == composed
    ] == [True]


def test_models_commands(model_home: Path, tmp_path: Path) -> None:
    def listed() -> list[tuple[str, int, bool]]:
        rows = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
        return [(m["name"], m["version"], m["active"]) for m in rows if not m["builtin"]]

    assert listed() == [("bands", 1, True)]
    v2 = band_model(tmp_path / "v2.onnx", name="bands", version=2, shift=1)
    installed = json_lines(vibrary("models", "install", "--json", str(v2), home=model_home).stdout)[0]
    assert (installed["model"], installed["version"], installed["classes"]) == ("bands", 2, ["low", "mid", "high"])
    assert installed["installed"] is True
    again = json_lines(vibrary("models", "install", "--json", str(v2), home=model_home).stdout)[0]
    assert (again["version"], again["installed"]) == (2, False)  # the same file: the same version, said so
    vibrary("models", "activate", "bands@1", home=model_home)
    assert listed() == [("bands", 1, True), ("bands", 2, False)]
    vibrary("models", "remove", "bands@2", home=model_home)
    assert listed() == [("bands", 1, True)]
    vibrary("models", "deactivate", "bands", home=model_home)
    none = vibrary("tag", str(write_tone(tmp_path / "a.wav", 100)), home=model_home, check=False)
    assert none.returncode == 1 and "no usable model: activate one" in none.stderr
    vibrary("models", "activate", "bands", home=model_home)
    listing = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    (path,) = [m["path"] for m in listing if m["active"]]
    os.rename(path, tmp_path / "away.onnx")  # active, its file gone: "activate one" was no help
    unusable = vibrary("tag", str(tmp_path / "a.wav"), home=model_home, check=False)
    why = unusable.stderr
    assert unusable.returncode == 1 and "no usable model (bands@1: its file is missing" in why, why
    assert "models list` says how to mend it" in why and "activate one" not in why
    os.rename(tmp_path / "away.onnx", path)
    again = json_lines(vibrary("models", "install", "--inactive", "--json", path, home=model_home).stdout)[0]
    assert (again["installed"], again["active"]) == (False, True)  # the same file: its version as it is
    vibrary("models", "install", str(band_model(tmp_path / "other.onnx", name="other")), home=model_home)
    (other,) = [
        m["path"]
        for m in json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
        if m["model"] == "other"
    ]
    Path(other).write_bytes(b"damaged")  # asked for by name beside a model that loads: said, not left out
    both = vibrary("tag", "--model", "other", "--model", "bands", str(tmp_path / "a.wav"), home=model_home, check=False)
    assert both.returncode == 1 and "1 model asked for cannot be used (other@1: " in both.stderr, both.stderr
    vibrary("models", "remove", "other", home=model_home)
    vibrary("models", "deactivate", "bands", home=model_home)
    missing = vibrary("models", "install", "--json", str(tmp_path / "nope.onnx"), home=model_home, check=False)
    assert missing.returncode == 1 and f"{tmp_path / 'nope.onnx'}: no such file" in missing.stderr, missing.stderr
    # with --json a failure is also a line on stdout, for the script that reads only that (it had nothing)
    assert json_lines(missing.stdout) == [{"error": f"{tmp_path / 'nope.onnx'}: no such file", "exit_status": 1}]
    for version in (2, 3):  # a model gone whole took a command a version, and left its folder behind
        newer = band_model(tmp_path / f"n{version}.onnx", version=9 + version)
        assert "shares no tag" not in vibrary("models", "install", str(newer), home=model_home).stderr
    moods = band_model(tmp_path / "moods.onnx", name="x", classes=("dark", "warm", "bright"))
    other = vibrary("models", "install", "--inactive", "--name", "bands", str(moods), home=model_home).stderr
    assert "bands@5 shares no tag with bands@4 (low, mid, high): once activated, a version of bands replaces" in other
    vibrary("models", "remove", "bands@5", home=model_home)
    assert listed() == [("bands", 1, False), ("bands", 3, False), ("bands", 4, True)]
    said = vibrary("models", "remove", "bands@3", "--all", home=model_home, check=False)
    assert said.returncode == 2 and "give NAME, not bands@3" in said.stderr and len(listed()) == 3
    said = vibrary(
        "models", "remove", "bands@9", "--all", home=model_home, check=False
    )  # (no such: usage all the same)
    assert said.returncode == 2 and "give NAME, not bands@9" in said.stderr
    gone = json_lines(vibrary("models", "remove", "bands", "--all", "--json", home=model_home).stdout)
    assert gone == [{"model": "bands", "action": "remove", "versions": [1, 3, 4]}] and listed() == []
    assert not (config.models_dir(model_home) / "bands").exists()


@pytest.mark.parametrize(
    "case", ["output without a bar", "bar without an output", "bar not a number", "bar nan", "bar 2.5"]
)
def test_a_model_whose_familiarity_and_its_bar_do_not_agree_is_refused(
    case: str, model_home: Path, tmp_path: Path
) -> None:
    import onnx
    from vibrary.daemon.infer import FAMILIAR_KEY

    path = band_model(
        tmp_path / "fussy.onnx", name="fussy", familiar_from=None if case.startswith("bar without") else 0.9
    )
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if case == "output without a bar":
        del meta[FAMILIAR_KEY]
    else:
        meta[FAMILIAR_KEY] = {"bar without an output": "0.9", "bar nan": "nan", "bar 2.5": "2.5"}.get(case, "high")
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    refused = vibrary("models", "install", str(path), home=model_home, check=False)
    said = "come together (one is missing)" if "without" in case else "must be a number from -1 to 1"
    assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    listed = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    assert [m["name"] for m in listed if not m["builtin"]] == ["bands"]


def test_two_hundred_files_copied_in_are_all_tagged_and_searchable(daemon: DaemonProcess, tmp_path: Path) -> None:
    """The README's walk-through: watch a folder, copy a sample pack in, find sounds by tag."""
    pack = tmp_path / "pack"
    expected: dict[str, str] = {}
    for i in range(200):
        band = list(BANDS)[i % 3]
        sub = ["drums", "keys", "fx"][i % 3]
        write_tone(pack / sub / f"{band}_{i:03d}.wav", BANDS[band] * (1 + 0.002 * i), seconds=0.3 + 0.01 * (i % 50))
        expected[f"{sub}/{band}_{i:03d}.wav"] = band
    library = tmp_path / "library"
    library.mkdir()
    added = vibrary("watch", "add", f"{library}/../library//", home=daemon.home).stdout  # said as it is held
    assert added.startswith(f"added {library}; watch folders now:\n{library}\n"), added
    again = vibrary("watch", "add", f"{library}/", home=daemon.home).stdout  # (it said "added" again)
    assert again.startswith(f"watched already: {library}; watch folders now:\n{library}\n"), again
    assert json_lines(vibrary("watch", "list", "--json", home=daemon.home).stdout) == [
        {"watches": [str(library)], "missing": [], "unwatched": []}
    ]
    shutil.copytree(pack, library / "pack")

    def done() -> dict:
        status = json_lines(vibrary("status", "--json", home=daemon.home).stdout)[0]
        return status if status["indexed"] == 200 and status["pending"] == 0 else {}

    status = wait_for(done, timeout=120, interval=0.5)
    assert status["failed"] == 0 and (status["models"], status["model_versions"]) == (["bands"], ["bands@1"])  # type: ignore[index]
    assert status["decoded"] + status["reused"] >= 200  # type: ignore[index]  # a file still growing is read again
    (library / "pack" / "broken.wav").write_text("not audio")
    broken = wait_for(lambda: json_lines(vibrary("status", "--json", home=daemon.home).stdout)[0]["failed"] == 1)
    assert broken
    (said,) = json_lines(vibrary("status", "--json", home=daemon.home).stdout)[0]["recent_failures"]
    assert said["path"] == str(library / "pack" / "broken.wav") and "not a recognised audio format" in said["error"]
    nested = vibrary("watch", "add", str(library / "pack"), home=daemon.home)
    assert f"inside {library}" in nested.stderr
    vibrary("watch", "remove", str(library / "pack"), home=daemon.home)
    assert vibrary("search", "low", "--limit", "-1", home=daemon.home, check=False).returncode == 2
    for band in BANDS:
        found = json_lines(vibrary("search", "--json", band, home=daemon.home).stdout)
        names = {str(Path(f["path"]).relative_to(library / "pack")) for f in found}
        assert names == {k for k, b in expected.items() if b == band}
        assert all(f["tags"][0]["tag"] == band and f["error"] is None for f in found)
        surest = json_lines(vibrary("search", "--json", band, "--limit", "5", home=daemon.home).stdout)
        scores = [f["tags"][0]["score"] for f in surest]
        assert scores == sorted((f["tags"][0]["score"] for f in found), reverse=True)[:5]  # the best five, best first
    drums_only = json_lines(
        vibrary(
            "search", "--json", "--under", str(library / "pack" / "drums"), "low", "OR", "mid", home=daemon.home
        ).stdout
    )
    assert drums_only and all("/drums/" in f["path"] and f["tags"][0]["tag"] in ("low", "mid") for f in drums_only)
    tags = json_lines(vibrary("tags", "--json", str(library / "pack" / "keys"), home=daemon.home).stdout)
    assert len(tags) == sum(1 for k in expected if k.startswith("keys/"))
    counts = {c["tag"]: c["files"] for c in json_lines(vibrary("counts", "--json", home=daemon.home).stdout)}
    assert counts == {band: sum(1 for b in expected.values() if b == band) for band in BANDS}


def test_query_words() -> None:
    assert parse_query(["kick", "-acoustic", "snare|clap"]) == ([["kick"], ["snare", "clap"]], ["acoustic"])
    assert parse_query(["Snare", "OR", "clap", "dark"]) == ([["snare", "clap"], ["dark"]], [])
    for spelled in ("kick | snare dark", "kick |snare dark", "kick| snare dark", "kick OR snare AND dark"):
        assert parse_query(spelled) == ([["kick", "snare"], ["dark"]], []), spelled  # '|' alone read nothing
    # a line typed whole (the tray's box, Client.search): a tag with spaces quoted, as the shell reads it
    assert parse_query('"Hi Hat" -"open hat"') == ([["hi hat"]], ["open hat"])  # was hi AND hat, NOT "open"
    assert parse_query("rock'n'roll #808 c#m") == ([["rock'n'roll"], ["#808"], ["c#m"]], [])  # no shell comment
    for wrong, said in [
        ("(kick OR snare) dark", "no parentheses"),  # '(kick' and 'snare)' were searched as tags
        ("kick - snare", "'-' alone"),  # the tag '-'
        ('kick "hi hat', "not closed"),
        ("NOT NOT kick", "say NOT once"),  # it was read as NOT kick
        ("| kick", "OR needs"),
        ("kick |", "OR needs"),
        ("kick OR | snare", "OR needs"),
        ("AND kick", "AND needs"),
        ("kick AND", "AND needs"),
        ("kick OR AND snare", "AND needs"),
        ("NOT -snare kick", "use one of them"),  # it left out a tag spelled "-snare"
        ("kick -snare|clap", "one at a time"),  # it left out a tag spelled "snare|clap"
        ("kick -snare | clap", "not an excluded one"),  # it was kick OR clap
    ]:
        with pytest.raises(QueryError, match=said):
            parse_query(wrong)


def test_quoted_search_words_keep_a_tag_spelled_with_a_space_and_one_unicode_form(tmp_path: Path) -> None:
    """A word quoted for the shell is split at its spaces unless a model spells a tag so: "NOT hi hat" was
    searched as the tag "not hi hat", and "hi hat|mid" as hi AND (hat OR mid). A tag pasted from a macOS
    folder name (é as e and an accent) found nothing."""
    from vibrary.clients.cli import build_parser
    from vibrary.clients.library_commands import _as_words, _query_words

    tags = {"hi hat", "mid", "open hat", "rock and roll"}
    for quoted, query in [
        ("NOT hi hat", ([], ["hi hat"])),
        ("-hi hat", ([], ["hi hat"])),
        ("hi hat|mid", ([["hi hat", "mid"]], [])),
        ("mid | open hat", ([["mid", "open hat"]], [])),
        ("hi hat", ([["hi hat"]], [])),
        ("low|mid -mid", ([["low", "mid"]], ["mid"])),  # not tags as a whole: its words
        ("kick snare|hi hat", ([["kick"], ["snare", "hi"], ["hat"]], [])),  # (as it was: ambiguous)
        ("kick OR hi hat", ([["kick", "hi hat"]], [])),  # OR its own word: it was kick OR hi, and hat
        ("kick NOT open hat", ([["kick"]], ["open hat"])),
        ("rock and roll", ([["rock and roll"]], [])),  # a model's class with an operator word in it: whole
        ("-rock and roll", ([], ["rock and roll"])),
        ('"rock and roll"', ([["rock and roll"]], [])),  # quoted for the shell twice (`'"rock and roll"'`)
        ('-"rock and roll"', ([], ["rock and roll"])),
        ("rock and mid", ([["rock"], ["mid"]], [])),  # no such tag: AND as a word
    ]:
        assert parse_query(_as_words(quoted, tags.__contains__)) == query, quoted
    # typed unquoted, a tag with spaces (a dataset's folder `Open Hat/` names one) was searched as its words
    for typed, query in [
        (["open", "hat"], ([["open hat"]], [])),
        (["kick", "-open", "hat", "mid"], ([["kick"], ["mid"]], ["open hat"])),
        (["hi", "hat|mid", "open", "hat"], ([["hi"], ["hat", "mid"], ["open hat"]], [])),
        (["mid", "OR", "hi", "hat", "low"], ([["mid", "hi hat"], ["low"]], [])),
        (["kick", "hi hat"], ([["kick"], ["hi hat"]], [])),
    ]:
        assert parse_query(_query_words(typed, tags.__contains__, tags.__contains__)) == query, typed
        assert parse_query(" ".join(w if " " not in w else f'"{w}"' for w in typed), tags.__contains__) == query
    # unquoted words join into a model's own tag, not through synonyms: `bass synth` was one word, the bass
    synonyms = {"bass synth", "ride cymbal"}.__contains__  # (as `synonyms list` spells them)
    for typed in (["bass", "synth"], ["-bass", "synth"], ["ride", "cymbal"]):
        assert len(_query_words(typed, synonyms, tags.__contains__)) == 2, typed
    # a word left out that is a tag itself is not joined: `-bass synth` found basses and left "bass synth" out
    classes = {"bass", "synth", "bass synth", "hi hat"}.__contains__
    assert parse_query(_query_words(["-bass", "synth"], classes, classes)) == ([["synth"]], ["bass"])
    assert parse_query(_query_words(["-hi", "hat"], classes, classes)) == ([], ["hi hat"])  # no tag hi: joined
    assert parse_query(_query_words(["-bass synth"], classes, classes)) == ([], ["bass synth"])  # quoted
    assert _query_words(["bass synth"], synonyms, tags.__contains__) == ["bass synth"]  # quoted: as before
    for text, said in (("--kick", "--kick: one '-' leaves a tag out (-kick)"), ("k" * 10_001, "10,000 at most")):
        with pytest.raises(QueryError, match=re.escape(said)):  # every file, and 50 s of shlex for a megabyte
            parse_query(text)
    assert parse_query(["cafe\u0301", "-Cafe\u0301s"]) == ([["caf\u00e9"]], ["caf\u00e9s"])
    parser = build_parser()
    assert parser.parse_args(["search", "mid", "--under=~/Samples"]).under == os.path.expanduser("~/Samples")
    too_many = vibrary("search", "mid", "--limit", str(2**31), home=tmp_path, check=False)
    assert too_many.returncode == 2 and "give at most 2,147,483,647" in too_many.stderr, too_many.stderr


def test_a_models_class_names_are_tags_in_lower_case_and_each_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Tags are searched as people type them, so a model's "BODY" class is the tag "body" (it used to be
    stored as "BODY" and never found); a model that names a class twice, in any case, is refused."""
    shouty = band_model(tmp_path / "shouty.onnx", name="shouty", classes=("Deep", "BODY", "Air"))
    vibrary("models", "install", str(shouty), home=daemon.home)
    wait_for(lambda: "shouty@1" in daemon.client.status().models)
    clip = write_tone(tmp_path / "clip.wav", BANDS["mid"])
    (tagged,) = list(daemon.client.tag([str(clip)]))
    assert next(t.tag for t in tagged.tags if t.model == "shouty") == "body"
    assert [f.path for f in daemon.client.search([["Body"]])] == [str(clip)]
    twice = band_model(tmp_path / "twice.onnx", name="twice", classes=("kick", "Kick", "snare"))
    bad = vibrary("models", "install", str(twice), home=daemon.home, check=False)
    assert bad.returncode == 1 and "'kick' more than once" in bad.stderr, bad.stderr


def test_search_words_that_look_like_options_and_model_filters(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`-TAG` excludes whatever it spells (`-high` used to be taken for -h with a value, `-acoustic` for an
    unknown option: exit 2); NOT does the same; a model filter must name an installed model, by name."""
    clips = {band: write_tone(tmp_path / f"{band}.wav", freq) for band, freq in BANDS.items()}
    list(daemon.client.tag([str(p) for p in clips.values()]))

    def found(*query: str) -> set[str]:
        return {Path(x["path"]).stem for x in json_lines(vibrary("search", "--json", *query, home=daemon.home).stdout)}

    assert found("low|mid|high", "-high", "-acoustic") == {"low", "mid"}
    assert found("low|mid", "--limit", "5", "-mid") == {"low"}  # words on both sides of an option
    assert found("low|mid", "--lim", "5", "--mod", "bands") == {"low", "mid"}  # argparse's abbreviations too
    first = vibrary("--json", "search", "low|high", "-high", home=daemon.home)  # --json before the command
    assert {Path(x["path"]).stem for x in json_lines(first.stdout)} == {"low"}
    assert found("low", "OR", "mid", "NOT", "mid") == {"low"}
    assert found("low|mid -mid") == found("low OR mid NOT mid") == {"low"}  # quoted whole: one tag, not found
    (daemon.home / "synonyms.json").write_text('{"low": ["bottom"')  # damaged: its aliases found nothing, unsaid
    damaged = vibrary("search", "bottom", home=daemon.home)
    assert "your synonyms cannot be read" in damaged.stderr and "built-in ones are used" in damaged.stderr
    (daemon.home / "synonyms.json").unlink()
    typo = vibrary("search", "hihg", "low", home=daemon.home)
    assert typo.stdout == "" and "0 files: no active model tags 'hihg' (did you mean 'high'?)" in typo.stderr
    either = vibrary("search", "low|hihg", home=daemon.home)  # a typo in an OR arm changed nothing, silently
    assert "1 file: no active model tags 'hihg' (did you mean 'high'?)" in either.stderr
    assert vibrary("search", "low|mid", "high", home=daemon.home).stderr.strip() == "0 files"  # no typo to blame
    elsewhere = vibrary("search", "--model", "bands", "kick", home=daemon.home)
    assert "0 files: model bands has no tag 'kick'" in elsewhere.stderr
    leaves_nothing_out = vibrary("search", "low", "-lwo", home=daemon.home)  # it found low, silently
    assert "1 file: no active model tags 'lwo' (did you mean 'low'?)" in leaves_nothing_out.stderr  # not '-lwo'
    nowhere = vibrary("search", "low", "--under", str(tmp_path / "nowhere"), home=daemon.home, check=False)
    assert nowhere.returncode == 1 and f"no folder {tmp_path / 'nowhere'} (--under)" in nowhere.stderr  # (exit 0)
    quiet = vibrary("search", "hihg", "--under", str(tmp_path / "nowhere"), "--json", home=daemon.home, check=False)
    assert "(did you mean 'high'?)" in quiet.stderr and "(--under)" in quiet.stderr  # was silent
    assert json_lines(quiet.stdout) == [{"error": f"no folder {tmp_path / 'nowhere'} (--under)", "exit_status": 1}]
    assert vibrary("search", "low", "--json", home=daemon.home).stderr == ""  # nothing to say: nothing said
    assert found("high", "--min-score", "0") > {"high"}  # every stored score (mid's), not hits only
    assert found("--model", "bands", "high") == {"high"}
    for command, model, said, code in (
        ("search", "nosuch", "no model nosuch", 1),
        ("counts", "bands@1", "without @VERSION", 2),  # a usage error, said before the daemon is asked
        ("search", "bands@", "versions count from 1", 2),
    ):
        query = ["high"] if command == "search" else []
        bad = vibrary(command, "--model", model, *query, home=daemon.home, check=False)
        assert bad.returncode == code and said in bad.stderr, bad.stderr


def test_search_finds_a_tag_by_the_spellings_the_synonym_table_gives_it(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`vibrary search hh` said "0 files: no active model tags 'hh'", though `synonyms list` says hh is hihat
    (and `"hi hat"`, which `search --help` shows quoted, searched hi and hat)."""
    drums = band_model(tmp_path / "drums.onnx", name="drums", classes=("kick", "snare", "hihat"))
    vibrary("models", "install", str(drums), home=daemon.home)
    clips = {band: write_tone(tmp_path / f"{band}.wav", freq) for band, freq in BANDS.items()}
    list(daemon.client.tag([str(p) for p in clips.values()]))

    def found(*query: str) -> tuple[set[str], str]:
        run = vibrary("search", "--json", *query, home=daemon.home)
        return {Path(x["path"]).stem for x in json_lines(run.stdout)}, run.stderr

    assert found("hh") == ({"high"}, "vibrary: searched 'hh' as 'hihat', the tag it spells\n")
    assert found("hi hats")[0] == found("BD|hh")[0] - {"low"} == {"high"}  # quoted whole; an OR of aliases
    assert found("kick", "-hh")[0] == found("kick", "NOT hi hat")[0] == {"low"}  # hi hat whole, among NOT and OR
    assert found("kick OR hi hat")[0] == {"low", "high"} and found("hi hat|snare")[0] == {"high", "mid"}
    vibrary("synonyms", "add", "tsk", "hihat", home=daemon.home)  # the user's own spelling
    assert found("tsk")[0] == {"high"}
    vibrary("synonyms", "add", "big room", "kick", home=daemon.home)  # unquoted, it was big AND room
    said = "vibrary: searched 'big room' as 'kick', the tag it spells\n"
    assert found("big", "room") == found("big room") == found("BIG", "Room") == ({"low"}, said)
    assert found("big", "room", "-kick")[0] == set()  # (its two words, then an excluded one)
    vibrary("synonyms", "add", "huge-room", "kick", home=daemon.home)  # joined otherwise: found alike
    assert found("huge", "room")[0] == {"low"}
    vibrary("synonyms", "add", "snare kick", "hihat", home=daemon.home)  # words that are tags keep their meaning
    assert "searched" not in found("snare", "kick")[1]
    spaced = band_model(tmp_path / "mine.onnx", name="mine", classes=("punchy kicks", "punchy", "kicks"))
    vibrary("models", "install", str(spaced), home=daemon.home)  # a tag with a space, from a folder's name
    wait_for(lambda: found("punchy kicks")[0] == {"low"})  # quoted: that tag, as typed
    joined = "vibrary: searched 'punchy kicks' as one tag (`vibrary search punchy AND kicks` for each word)"
    assert found("punchy", "kicks") == ({"low"}, joined + "\n")  # unquoted: the same, no longer unsaid
    assert "as one tag" not in found("punchy kicks")[1] + found("punchy kicks OR kicks")[1]  # quoted together
    assert found("punchy", "AND", "kicks")[0] == set() and "as one tag" not in found("punchy", "AND", "kicks")[1]
    own = band_model(tmp_path / "own.onnx", name="own", classes=("hh", "bd", "snr"))  # the aliases, trained as tags
    vibrary("models", "install", str(own), home=daemon.home)
    wait_for(lambda: found("hh", "--model", "own")[0])
    shadowed = "vibrary: 'hh' is a tag of its own to a model, not the 'hihat' it spells (`vibrary search hh OR hihat`"
    assert shadowed in found("hh")[1] and "'hihat' as" not in found("hh")[1]  # (it found fewer hihats, unsaid)
    assert found("hh", "OR", "hihat")[0] == found("hh")[0] | found("hihat")[0]
    assert "of its own" not in found("hh", "OR", "hihat")[1] + found("kick", "-hh")[1]  # (advised what was typed)
    vibrary("models", "remove", "own", home=daemon.home)
    typo = found("hhh")[1]  # no alias: still a typo, said so
    assert "no active model tags 'hhh'" in typo and "searched" not in typo
    vibrary("models", "deactivate", "drums", home=daemon.home)
    inactive = "model drums is not active (`vibrary models activate drums` tags the library with it)"
    assert inactive in found("kick", "--model", "drums")[1]  # "model drums has no tag 'kick'"
    assert inactive in vibrary("counts", "--model", "drums", home=daemon.home).stderr  # nothing at all
    for m in daemon.client.models():
        if m.active:
            vibrary("models", "deactivate", m.name, home=daemon.home)
    none = "vibrary: no model is active (`vibrary models activate NAME`)\n"  # not "… `search TAG --min-score`"
    assert vibrary("counts", home=daemon.home).stderr == none


def test_a_status_right_after_models_activate_counts_the_re_tag(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`vibrary models activate X && vibrary status --wait` said all was indexed and ended: the command changes
    the index itself, and the daemon followed within a second, after that status."""
    clips = [str(write_tone(tmp_path / f"{band}.wav", freq)) for band, freq in BANDS.items()]
    list(daemon.client.tag(clips))
    vibrary("models", "install", "--inactive", str(band_model(tmp_path / "other.onnx", name="other")), home=daemon.home)
    vibrary("pause", home=daemon.home)  # nothing read meanwhile: what status says is what the daemon knows
    with contextlib.closing(Index(config.index_path(daemon.home))) as index:
        index.set_active(index.model("other"), True)  # what `vibrary models activate other` does
        status = daemon.client.status()
    assert status.pending == 3 and "other@1" in status.models


def test_status_wait_says_when_indexing_is_paused_or_waits_for_a_drive(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`vibrary status --wait` with files pending while paused, or under a watch folder not there now, would
    wait for ever: it says why it stops."""
    lib = tmp_path / "lib"
    write_tone(lib / "a.wav", BANDS["low"])
    vibrary("pause", home=daemon.home)
    daemon.client.add_watch(str(lib))
    wait_for(lambda: daemon.client.status().pending == 1)
    stuck = vibrary("status", "--wait", home=daemon.home, check=False, timeout=30)
    assert stuck.returncode == 1 and "paused" in stuck.stderr and "vibrary resume" in stuck.stderr
    unfinished = "1 file not tagged yet; indexing is paused (`vibrary resume`): results may be incomplete"
    assert unfinished in vibrary("search", "low", home=daemon.home).stderr  # it said "0 files", no more
    lib.rename(tmp_path / "unplugged")  # its file waits for the folder to be back: it waited for ever
    wait_for(lambda: list(daemon.client.status().missing_watches) == [str(lib)], timeout=30)
    vibrary("resume", home=daemon.home)
    stuck = vibrary("status", "--wait", home=daemon.home, check=False, timeout=60)
    assert stuck.returncode == 1 and "1 file pending, none read for 10 s" in stuck.stderr, stuck.stderr
    assert f"watch folders not there now ({lib})" in stuck.stderr
    for command in (("search", "low"), ("counts",), ("search", "low", "--under", str(tmp_path))):
        said = vibrary(*command, home=daemon.home).stderr  # "0 files", or nothing: as of an empty library
        assert f"not there now, left out: the files under {lib} (a drive unplugged" in said, command
    told = vibrary("tags", str(lib / "a.wav"), home=daemon.home)  # (it showed them as if they were there)
    said = told.stderr
    assert f"not there now, their tags as the index last had them: the files under {lib}" in said, said
    assert f"{lib / 'a.wav'}: waits to be read (its watch folder" in told.stdout, told.stdout  # never read: not "again"
    (tmp_path / "other").mkdir()
    assert "left out" not in vibrary("search", "low", "--under", str(tmp_path / "other"), home=daemon.home).stderr
    assert "not there now" not in vibrary("tags", str(tmp_path / "other"), home=daemon.home).stderr


def test_status_wait_fails_when_no_model_is_active_though_nothing_is_pending(daemon: DaemonProcess) -> None:
    """`vibrary status --wait && vibrary search kick` with every model deactivated: nothing pending, so the wait
    ended with 0 while the status said "files wait for one", and the search found nothing."""
    for ref in daemon.client.status().models:
        vibrary("models", "deactivate", ref.partition("@")[0], home=daemon.home)
    wait_for(lambda: not daemon.client.status().models)
    waited = vibrary("status", "--wait", home=daemon.home, check=False, timeout=30)
    assert waited.returncode == 1 and "nothing is tagged while no model is active" in waited.stderr, waited
    assert "files added wait for one" in waited.stderr and "; files wait for one" not in waited.stderr


def _connections(socket: Path) -> int:
    """Connections to the daemon's socket now (Linux lists each accepted one with the socket's path)."""
    return sum(line.endswith(f" {socket}") for line in Path("/proc/net/unix").read_text().splitlines())


def test_status_wait_waits_for_a_daemon_that_is_restarted(model_home: Path, tmp_path: Path) -> None:
    """A daemon restarted meanwhile (its start-at-login unit, an upgrade) ended an hour's wait with "no
    daemon is running", exit 1."""
    config.Settings(settle_s=15.0).save(model_home)  # the file waits that long: the wait outlasts a restart
    d = start_daemon(model_home)
    waiting = None
    try:
        write_tone(tmp_path / "lib" / "a.wav", BANDS["low"])
        d.client.add_watch(str(tmp_path / "lib"))
        wait_for(lambda: d.client.status().pending == 1)
        env = {**os.environ, "VIBRARY_HOME": str(model_home)}
        command = [sys.executable, "-m", "vibrary.clients.cli", "status", "--wait", "--json"]
        before = _connections(config.socket_path(model_home))
        waiting = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _connections(config.socket_path(model_home)) > before)  # its first status asked
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()
        d.stop()
        d = start_daemon(model_home)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "the daemon stopped; waiting up to 60 s" in err
        assert "indexing: 0 of 1 file done" in err  # no terminal, no bar: a line every 10 s (it said nothing)
        assert (json_lines(out)[0]["pending"], json_lines(out)[0]["indexed"]) == (0, 1)
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
        d.stop()


def test_status_wait_waits_for_a_daemon_still_starting(model_home: Path) -> None:
    """`vibrary daemon & vibrary status --wait` failed at once: a daemon opens its socket once every folder is
    watched (seconds for a big library), and until then it "does not answer"."""
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    command = [sys.executable, "-m", "vibrary.clients.cli", "status", "--wait", "--json"]
    d = None
    with home_held(model_home) as pid:  # a daemon starting, as a status sees it
        waiting = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert waiting.poll() is None, waiting.communicate()
    try:
        d = start_daemon(model_home)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert f"waiting up to 60 s for the daemon to answer (the daemon (pid {pid}) does not answer" in err
        assert json_lines(out)[0]["pending"] == 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
        if d is not None:
            d.stop()
    # typed right after `vibrary daemon &`: no daemon holds the home yet (Python is still loading it)
    waiting = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()
        d = start_daemon(model_home)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0 and json_lines(out)[0]["pending"] == 0, err
    finally:
        if waiting.poll() is None:
            waiting.kill()
        d.stop()
    started = time.monotonic()  # and with none coming, it says so after those seconds
    alone = vibrary("status", "--wait", home=model_home, check=False)
    assert alone.returncode == 1 and "no daemon answers" in alone.stderr and time.monotonic() - started < 30


def test_status_wait_waits_for_the_folders_still_being_listed(
    model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch folder is listed in the background: `watch add ~/Samples && status --wait` said "0 pending"
    and ended before the listing had found a file (a big library takes minutes to list; so does a restart's
    reconcile). The status counts the folders being listed, and the wait waits for them."""
    from vibrary.daemon.server import serve
    from vibrary.daemon.service import Daemon
    from vibrary.daemon.watch import Watcher

    listing, release = threading.Event(), threading.Event()
    real_scan = Watcher.scan

    def slow_scan(self: Watcher, folder: str) -> None:  # a network drive's listing, slow to come
        listing.set()
        release.wait(30)
        real_scan(self, folder)

    monkeypatch.setattr(Watcher, "scan", slow_scan)
    write_tone(tmp_path / "lib" / "a.wav", BANDS["low"])
    config.Settings(settle_s=0.2, nice=0).save(model_home)  # in this process: pytest's own priority stays
    d = Daemon(model_home)
    d.start()
    servers, _ = serve(d, str(config.socket_path(model_home)))
    waiting = None
    try:
        d.add_watch(str(tmp_path / "lib"))
        assert listing.wait(10)
        assert (d.status()["pending"], d.status()["scanning"]) == (0, 1)
        env = {**os.environ, "VIBRARY_HOME": str(model_home)}
        command = [sys.executable, "-m", "vibrary.clients.cli", "status", "--wait", "--json"]
        waiting = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert waiting.poll() is None, waiting.communicate()
        release.set()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        said = json_lines(out)[0]
        assert (said["pending"], said["indexed"], said["scanning"]) == (0, 1, 0)
    finally:
        release.set()
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
        for server in servers:
            server.stop(grace=0)
        d.stop()


def test_removing_the_active_version_activates_the_one_before_and_numbers_are_not_reused(
    model_home: Path, tmp_path: Path
) -> None:
    def versions() -> list[tuple[int, bool]]:
        rows = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
        return [(m["version"], m["active"]) for m in rows if m["name"] == "bands"]

    v2 = band_model(tmp_path / "v2.onnx", name="bands", version=2, shift=1)
    vibrary("models", "install", str(v2), home=model_home)
    rows = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    installed = Path(next(m["path"] for m in rows if (m["name"], m["version"]) == ("bands", 2)))
    plot = installed.with_suffix(".learning_curve.png")
    plot.write_bytes(b"png")  # as a training leaves one beside its model
    out = json_lines(vibrary("models", "remove", "bands", "--json", home=model_home).stdout)[0]
    assert (out["version"], out["activated"]) == (2, "bands@1") and versions() == [(1, True)]
    assert not installed.exists() and not plot.exists()
    v3 = band_model(tmp_path / "v3.onnx", name="bands", version=3, shift=2)
    assert json_lines(vibrary("models", "install", "--json", str(v3), home=model_home).stdout)[0]["version"] == 3
    moods = band_model(tmp_path / "moods.onnx", name="x", classes=("dark", "low", "bright"))
    vibrary("models", "install", "--name", "bands", str(moods), home=model_home)  # bands@4, of other tags
    gone = vibrary("models", "remove", "bands", home=model_home).stdout  # (bands@1's tags came back, unsaid)
    other = "its tags are not bands@4's: gone: bright, dark; new: high, mid"
    assert gone.strip() == f"removed bands@4; bands@3 is active instead, and {other}"
    for version in (3, 1):
        last = vibrary("models", "remove", f"bands@{version}", home=model_home).stdout.strip()
    assert last == "removed bands@1: no version of bands tags the library now"


def test_bad_numbers_and_settings_are_refused_before_anything_starts(model_home: Path, tmp_path: Path) -> None:
    clip = write_tone(tmp_path / "a.wav", BANDS["low"])
    for args in (("tag", "--top", "0", str(clip)), ("daemon", "--workers", "-1"), ("train", "x", "--epochs", "0")):
        bad = vibrary(*args, home=model_home, check=False)
        assert bad.returncode == 2 and "give 1 or more" in bad.stderr, (args, bad.stderr)
    (model_home / "config.json").write_text('{"workers": "two"}')
    bad = vibrary("tag", str(clip), home=model_home, check=False)
    assert bad.returncode == 1 and "workers must be a whole number" in bad.stderr, bad.stderr
    (model_home / "config.json").write_text('{"workers": 100000}')  # was "can't start new thread", a traceback
    bad = vibrary("tag", str(clip), home=model_home, check=False)
    assert bad.returncode == 1 and "workers must be 64 or less" in bad.stderr, bad.stderr
    assert "64 or fewer" in vibrary("daemon", "--workers", "100000", home=model_home, check=False).stderr
    for text, said in (
        ('{"settle_s": 1e9}', "settle_s must be 3600 or less"),  # files pending for decades
        ('{"store_min_score": 5}', "store_min_score must be 1 or less"),  # only each model's best tag stored
    ):
        (model_home / "config.json").write_text(text)
        with pytest.raises(ValueError, match=re.escape(said)):
            config.Settings.load(model_home)
    for text in ('{"settle_s": NaN}', '{"settle_s": 1e999}'):  # (JSON's infinity): files pending for ever
        (model_home / "config.json").write_text(text)
        bad = vibrary("tag", str(clip), home=model_home, check=False)
        assert bad.returncode == 1 and "settle_s must be a number" in bad.stderr, bad.stderr
    (model_home / "config.json").write_bytes(b"\xfd\xfe binary")  # named the codec, not the file
    bad = vibrary("tag", str(clip), home=model_home, check=False)
    assert bad.returncode == 1 and f"{model_home / 'config.json'}: not valid JSON" in bad.stderr, bad.stderr
    (model_home / "config.json").unlink()
    for command in (["daemon"], ["trainer", "serve"]):  # malformed, as `train --trainer` says it (it exited 1)
        taken = vibrary(*command, "--listen", "nonsense", "--token", "t", home=model_home, check=False)
        assert taken.returncode == 2 and "--listen: nonsense: expected HOST:PORT" in taken.stderr, taken.stderr
    with socket.create_server(("127.0.0.1", 0)) as holder:  # grpc wrote its own error line first, then ours
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        taken = vibrary("daemon", "--listen", listen, "--token", "t", home=model_home, check=False)
    said = f"vibrary: cannot listen on {listen}: port {listen.split(':')[1]} is taken: another program listens on it"
    warned, error = taken.stderr.split("\n", 1)  # (a token on the command line: any user's `ps` shows it)
    assert (
        warned == "vibrary: warning: --token on the command line can be read by every user of this machine (ps);"
        " set $VIBRARY_TOKEN instead"
    )
    assert taken.returncode == 1 and error.startswith(said), taken.stderr


def test_a_dataset_a_training_reads_cannot_be_changed_by_another_command(model_home: Path, tmp_path: Path) -> None:
    """The daemon refused edits to a dataset it trained on, but `vibrary dataset` in another terminal did not
    ask it: now every process takes the dataset's lock. Creating over a dataset says what it replaces."""
    from vibrary.daemon import dataset

    for band in ("low", "high"):
        for i in range(2):
            write_tone(tmp_path / "ex" / band / f"{i}.wav", BANDS[band] * (1 + 0.01 * i))
    vibrary("dataset", "create", "mine", str(tmp_path / "ex"), home=model_home)
    with dataset.reading(model_home, "mine"):
        anew = ("create", "mine", str(tmp_path / "ex"), "--replace")
        for args in (("drop", "mine", "low"), anew, ("delete", "mine")):
            busy = vibrary("dataset", *args, home=model_home, check=False)
            assert busy.returncode == 1 and "is being trained on" in busy.stderr, (args, busy.stderr)
    again = vibrary("dataset", "create", "mine", str(tmp_path / "ex"), "--replace", home=model_home)
    assert "replaced dataset mine (4 clips before" in again.stderr
    refused = vibrary(
        "dataset", "create", "mine", str(tmp_path / "ex" / "low"), "--replace", home=model_home, check=False
    )
    assert refused.returncode == 1 and "replaced" not in refused.stderr, refused.stderr  # it was kept


def test_activate_by_name_brings_back_the_version_active_last(model_home: Path, tmp_path: Path) -> None:
    """A rollback (bands@2 → bands@1), then `deactivate bands` and `activate bands`, brought back bands@2: the
    newest, the version rolled away from. A version installed --inactive since was never active: not it either."""
    vibrary(
        "models", "install", str(band_model(tmp_path / "v2.onnx", name="bands", version=2, shift=1)), home=model_home
    )
    vibrary("models", "activate", "bands@1", home=model_home)
    vibrary("models", "deactivate", "bands", home=model_home)
    staged = band_model(tmp_path / "v3.onnx", name="bands", version=3, shift=2)
    vibrary("models", "install", "--inactive", str(staged), home=model_home)
    (on,) = json_lines(vibrary("models", "activate", "--json", "bands", home=model_home).stdout)
    assert (on["model"], on["version"]) == ("bands", 1), on
    rows = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    assert [(m["version"], m["active"]) for m in rows if m["name"] == "bands"] == [(1, True), (2, False), (3, False)]


def test_deactivate_by_name_deactivates_the_active_version(model_home: Path, tmp_path: Path) -> None:
    """With bands@1 active and bands@2 installed inactive, `deactivate bands` used to pick the newest
    (already inactive) version and say it was done while bands@1 went on tagging; run again, it said it
    deactivated a version although none was active (and a second `activate` that it activated one)."""
    v2 = band_model(tmp_path / "v2.onnx", name="bands", version=2, shift=1)
    vibrary("models", "install", "--inactive", str(v2), home=model_home)
    vibrary("models", "deactivate", "bands", home=model_home)
    rows = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    assert [(m["version"], m["active"]) for m in rows if m["name"] == "bands"] == [(1, False), (2, False)]
    again = vibrary("models", "deactivate", "bands", home=model_home)  # it said "deactivated bands@2" again
    assert again.returncode == 0 and again.stdout.strip() == "nothing of bands was active", again.stdout
    (told,) = json_lines(vibrary("models", "deactivate", "--json", "bands@1", home=model_home).stdout)
    assert (told["model"], told["version"], told["changed"]) == ("bands", 1, False)
    vibrary("models", "activate", "bands@1", home=model_home)
    twice = vibrary("models", "activate", "bands@1", home=model_home)  # it said "activated bands@1" again
    assert twice.stdout.strip() == "bands@1 was already active", twice.stdout
    long_name = vibrary("dataset", "show", "x" * 300, home=model_home, check=False)
    assert long_name.returncode == 2 and "100 at most" in long_name.stderr, long_name.stderr  # no name: usage


def test_a_damaged_index_is_one_line_not_a_traceback(model_home: Path) -> None:
    index = model_home / "index.sqlite"
    index.write_bytes(index.read_bytes()[:4096] + b"\xff" * 4096)  # cut short and overwritten
    for args in (("models", "list"), ("daemon",)):
        proc = vibrary(*args, home=model_home, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"the index {index} is damaged" in proc.stderr and "move it aside" in proc.stderr
    # a daemon that cannot start was "no daemon answers; start it with `vibrary daemon`", again
    status = vibrary("status", home=model_home, check=False)
    assert "its last start failed (the index" in status.stderr and "move it aside" in status.stderr, status.stderr


def test_tag_cut_short_by_its_reader_stops_quietly(model_home: Path, tmp_path: Path) -> None:
    """`vibrary tag --json DIR | head -2` printed a traceback per batch from the tagging threads, and
    "could not store a batch of 8 files; they stay pending" of a command that stores nothing."""
    import subprocess
    import sys

    from tests.conftest import AS_USER

    for i in range(40):
        write_tone(tmp_path / "kit" / f"t{i:02d}.wav", 100.0 + 20 * i, seconds=0.1)
    proc = subprocess.Popen(
        [*AS_USER, sys.executable, "-m", "vibrary.clients.cli", "tag", "--json", str(tmp_path / "kit")],
        env={**os.environ, "VIBRARY_HOME": str(model_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() and proc.stdout.readline()
    proc.stdout.close()  # as `| head -2` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "pending" not in err, err


def test_an_empty_path_is_a_usage_error_not_the_current_folder(model_home: Path) -> None:
    """`vibrary watch add "$SAMPLES"` with the variable unset watched the current folder, whatever it was."""
    for args in (
        ("watch", "add", ""),
        ("tag", " "),
        ("tags", ""),
        ("search", "kick", "--under", ""),
        ("dataset", "create", "x", ""),
    ):
        said = vibrary(*args, home=model_home, check=False)
        assert said.returncode == 2 and "an empty path (an unset variable?)" in said.stderr, (args, said.stderr)


@pytest.mark.parametrize("classes", [("or", "kick", "snare"), ("-snare", "kick", "hat"), ("a|b", "kick", "hat")])
def test_a_model_whose_tags_read_as_search_syntax_is_refused(
    classes: tuple[str, ...], model_home: Path, tmp_path: Path
) -> None:
    """`vibrary search or` is a usage error and `-snare` leaves snare out: such tags could never be found."""
    from vibrary.daemon.suggest import clean_tag

    odd = band_model(tmp_path / "odd.onnx", name="odd", classes=classes)
    refused = vibrary("models", "install", str(odd), home=model_home, check=False)
    assert refused.returncode == 1 and "read as search syntax" in refused.stderr, refused.stderr
    with pytest.raises(ValueError, match="words of a search"):
        clean_tag("NOT")  # a folder so named: refused before a training that could not be installed


def test_watching_the_folder_above_a_watch_says_so_and_indexes_each_file_once(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Adding the parent of a watched folder gave no notice (the other way round did)."""
    for i, band in enumerate(BANDS):
        write_tone(tmp_path / "lib" / "pack" / f"{band}.wav", BANDS[band])
        write_tone(tmp_path / "lib" / f"loose_{i}.wav", BANDS[band])
    vibrary("watch", "add", str(tmp_path / "lib" / "pack"), home=daemon.home)
    above = vibrary("watch", "add", str(tmp_path / "lib"), home=daemon.home)
    assert f"{tmp_path / 'lib'} holds 1 watch folder already ({tmp_path / 'lib' / 'pack'})" in above.stderr
    whole = vibrary("watch", "add", "/", home=daemon.home, check=False)  # refused: no notice before it
    assert whole.returncode == 1 and "holds" not in whole.stderr and "whole disk" in whole.stderr, whole.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:  # added without a word, and nothing indexed
        said = vibrary("watch", "add", str(locked), home=daemon.home).stderr
        assert f"{locked} cannot be listed (Permission denied): its files are indexed once it can be" in said, said
    finally:
        locked.chmod(0o755)

    def done() -> dict:
        status = json_lines(vibrary("status", "--json", home=daemon.home).stdout)[0]
        return status if status["indexed"] + status["failed"] >= 2 * len(BANDS) and status["pending"] == 0 else {}

    status = wait_for(done, timeout=60, interval=0.3)
    assert (status["indexed"], status["failed"]) == (2 * len(BANDS), 0)  # type: ignore[index]
    paths = [f["path"] for f in json_lines(vibrary("tags", "--json", str(tmp_path / "lib"), home=daemon.home).stdout)]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 2 * len(BANDS)


def test_tags_says_the_paths_as_tag_does(daemon: DaemonProcess, tmp_path: Path) -> None:
    """The same shape, as interfaces.md says: `tags kick/k.wav` said the index's absolute path where `tag` says it
    as given, so a script comparing the two found no file in both."""
    for band, freq in BANDS.items():
        write_tone(tmp_path / "lib" / "kit" / f"{band}.wav", freq)
    list(daemon.client.tag([str(tmp_path / "lib")]))
    env = {**os.environ, "VIBRARY_HOME": str(daemon.home)}

    def paths(*args: str) -> list[str]:
        command = [sys.executable, "-m", "vibrary.clients.cli", *args, "--json"]
        proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
        return sorted(line["path"] for line in json_lines(proc.stdout))

    for given in (["lib"], ["lib/kit/low.wav", "lib/kit"], [str(tmp_path / "lib")]):
        assert paths("tags", *given) == paths("tag", *given), given
    assert paths("tags", "lib/kit/mid.wav") == ["lib/kit/mid.wav"]


def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """The imports take about 0.3 s, and a Ctrl-C in them printed a traceback from inside numpy or grpc.
    The console script's entry makes them: the interrupt is raised there, as the import of the command line
    would raise it, here by an import hook so that it lands in the imports every time."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vibrary.clients.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from vibrary.clients.entry import main\n"
        "sys.exit(main())\n"
    )
    for asked, said in (([], ""), (["status", "--json"], '{"error": "interrupted", "exit_status": 130}\n')):
        done = subprocess.run([sys.executable, "-c", script, *asked], capture_output=True, text=True, timeout=60)
        assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
        assert done.stdout == said  # with --json, the last line every ending has (there was none)


def test_grpcs_own_log_lines_stay_out_of_a_commands_terminal(home: Path, tmp_path: Path) -> None:
    """`trainer health --tls-ca` of a trainer serving no TLS printed "I1207 … ssl_transport_security.cc:2563]
    Handshake failed …" beside the command's own words for it."""
    import http.server
    import subprocess
    import sys
    import threading

    pytest.importorskip("cryptography")
    from tests.conftest import self_signed

    (tmp_path / "cert.pem").write_bytes(self_signed()[0])
    plain = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # no TLS there
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{plain.server_address[1]}"
        script = "import sys\nfrom vibrary.clients.entry import main\nsys.exit(main())\n"
        health = ["trainer", "health", "--target", target, "--tls-ca", str(tmp_path / "cert.pem"), "--timeout", "3"]
        env = {**os.environ, "VIBRARY_HOME": str(home)}
        env.pop("GRPC_VERBOSITY", None)
        done = subprocess.run([sys.executable, "-c", script, *health], capture_output=True, text=True, env=env)
    finally:
        plain.shutdown()
    assert done.returncode == 1 and f"trainer at {target}" in done.stderr, done.stderr
    assert not re.search(r"^[IWE]\d{4} ", done.stderr, re.M), done.stderr


def test_a_second_ending_signal_ends_a_clean_up_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first SIGTERM set both ending signals to be ignored while the command cleaned up: one that hung (a read
    of a stalled network drive) could then only be SIGKILLed, and its children were started ignoring them too."""
    import signal

    from vibrary.clients import output

    monkeypatch.setattr(output, "_ended_at", [])
    monkeypatch.setattr(sys, "argv", ["vibrary", "tag", "--json", "/mnt/nas"])
    ended: list[int] = []
    written: list[bytes] = []
    monkeypatch.setattr(output.os, "_exit", ended.append)
    monkeypatch.setattr(output.os, "write", lambda fd, data: written.append(data))
    with pytest.raises(output.Terminated):
        output.terminated(signal.SIGHUP, None)
    output.terminated(signal.SIGTERM, None)  # a closed terminal's pair: one ending
    assert ended == []
    output._ended_at[0] -= output.PAIR_S  # asked again later: its clean-up hangs
    output.terminated(signal.SIGTERM, None)
    assert ended == [143]  # and with --json, the last line every ending has
    assert written == [b'{"error": "terminated (SIGTERM)", "exit_status": 143}\n']


def test_ctrl_c_during_tag_exits_130_with_whole_lines(model_home: Path, tmp_path: Path) -> None:
    """Ctrl-C while files were being read aborted the process half the time (134, "terminate called without
    an active exception": onnxruntime's threads still running at the exit): the files in flight finish, the
    rest are dropped, the exit is 130 and every line printed is whole JSON."""
    import signal
    import subprocess
    import sys

    for i in range(120):
        write_tone(tmp_path / "many" / f"{i}.wav", 100 + 10 * i, seconds=2.0)
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    ends = [(signal.SIGINT, "interrupted")] * 3 + [(signal.SIGTERM, "terminated (SIGTERM)")]  # (`timeout`, `kill`)
    for stop, said in ends:  # the abort came about one time in two
        proc = subprocess.Popen(
            [sys.executable, "-m", "vibrary.clients.cli", "tag", "--json", str(tmp_path / "many")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # reading files, some in onnxruntime
        proc.send_signal(stop)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 128 + stop
        *lines, ended = json_lines(first + rest)
        assert 1 <= len(lines) < 120 and all(line["tags"] for line in lines)
        assert ended == {"error": said, "exit_status": 128 + stop}  # the last line, as any ending's


def test_stopping_a_daemon_of_a_mistyped_home_makes_no_home(tmp_path: Path) -> None:
    """`vibrary daemon stop` made the folder VIBRARY_HOME named (a relative one inside a sample pack)."""
    typo = tmp_path / "no-such-home"
    stopped = vibrary("daemon", "stop", home=typo, check=False)
    assert stopped.returncode == 1 and "no daemon is running" in stopped.stderr and not typo.exists()


_WITH_LINES_AT_ONCE = (
    "import sys\n"
    "from vibrary.clients import output\n"
    "output.LOG_EVERY_S = 0.0\n"
    "from vibrary.clients.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_long_work_writes_lines_of_progress_where_no_bar_can_show(model_home: Path, tmp_path: Path) -> None:
    """A piped `dataset create` or `tag` (a script, a log file) said nothing until it ended, minutes for a big
    pack: the bar shows only on a terminal. Here a line is due at every file (LOG_EVERY_S 0)."""
    from tests.synth import write_kinds

    write_kinds(tmp_path / "MyTags", per_kind=2, seed=3)
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    for args, doing in [
        (["dataset", "create", "mine", str(tmp_path / "MyTags")], "spectrograms"),
        (["tag", "--json", str(tmp_path / "MyTags")], "tagging"),
    ]:
        run = [sys.executable, "-c", _WITH_LINES_AT_ONCE, *args]
        proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert f"{doing}: 1 of 6 files done" in lines and f"{doing}: 6 of 6 files done" in lines, proc.stderr


def test_status_says_which_pending_files_are_being_re_tagged(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A model activated re-tags the library: "indexed 0, pending 3" of files all searchable read as a library
    not indexed yet (paused here, so the count stands still)."""
    lib = tmp_path / "lib"
    for band, freq in BANDS.items():
        write_tone(lib / f"{band}.wav", freq)
    daemon.client.add_watch(str(lib))
    wait_for(lambda: daemon.client.status().indexed == len(BANDS))
    vibrary("pause", home=daemon.home)
    vibrary("models", "install", str(band_model(tmp_path / "other.onnx", name="other", shift=1)), home=daemon.home)
    wait_for(lambda: daemon.client.status().pending == len(BANDS))
    said = json_lines(vibrary("status", "--json", home=daemon.home).stdout)[0]
    assert (said["pending"], said["retagging"]) == (len(BANDS), len(BANDS)), said
    human = vibrary("status", home=daemon.home).stdout
    assert f"pending {len(BANDS)} ({len(BANDS)} tagged before, being re-tagged)" in human, human
    assert len(list(daemon.client.search("low"))) == 1  # searchable meanwhile, by the tags they had
    new = write_tone(lib / "new.wav", 440.0)
    wait_for(lambda: daemon.client.status().pending == len(BANDS) + 1)
    (line,) = json_lines(vibrary("tags", "--json", str(new), home=daemon.home).stdout)
    assert (line["tags"], line["error"], line["note"]) == ([], None, "not read yet (pending)"), line  # not "none"
    # a file pending with the tags it had says so: one overwritten while paused showed what it had been
    (line,) = json_lines(vibrary("tags", "--json", str(lib / "low.wav"), home=daemon.home).stdout)
    assert (line["tags"][0]["tag"], line["pending"], "note" in line) == ("low", True, False), line
    human = vibrary("tags", str(lib / "low.wav"), home=daemon.home).stdout
    again = "(to be read again: a model re-tags the library, or the file changed)"
    assert human.startswith(f"{lib / 'low.wav'}: low ") and again in human, human
    assert "to be read again" not in vibrary("search", "low", home=daemon.home).stdout  # (its stderr says it once)
    warned = vibrary("search", "low", home=daemon.home).stderr.splitlines()[1:]  # (every file read as at risk)
    paused = "indexing is paused (`vibrary resume`)"
    assert warned == [
        f"vibrary: 1 file not tagged yet; {paused}: results may be incomplete until they are",
        f"vibrary: {len(BANDS)} files being re-tagged, a model or the files changed; {paused}: some of their tags"
        " may be missing from the results until they are",
    ], warned
    vibrary("resume", home=daemon.home)
    wait_for(lambda: daemon.client.status().pending == 0)
    assert daemon.client.status().retagging == 0


def test_tag_fails_when_its_lines_cannot_be_written_and_tells_two_versions_apart(
    model_home: Path, tmp_path: Path
) -> None:
    """`vibrary tag --json PACK > tags.jsonl` on a full disk lost every line and exited 0 (the write error was
    caught as a failed batch); `--model mine@1 --model mine@3` gave both versions' tags as "mine", one's
    unfamiliar marks on the other's."""
    low = write_tone(tmp_path / "lib" / "low.wav", BANDS["low"])
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    with open("/dev/full", "w") as full:
        run = [sys.executable, "-m", "vibrary.clients.cli", "tag", "--json", str(low)]
        proc = subprocess.run(run, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "could not write the results: No space left on device" in proc.stderr, proc.stderr
    vibrary("models", "install", str(band_model(tmp_path / "v2.onnx", name="bands", shift=1)), home=model_home)
    both = vibrary("tag", "--json", "--model", "bands@1", "--model", "bands@2", str(low), home=model_home)
    (line,) = json_lines(both.stdout)
    assert {t["model"] for t in line["tags"]} == {"bands@1", "bands@2"}, line


def test_tags_of_a_name_that_is_not_utf8_says_so_beside_the_others(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`find ... -print0 | xargs -0 vibrary tags --json`: one such name failed the whole batch, exit 1."""
    good = write_tone(tmp_path / "lib" / "low.wav", BANDS["low"])
    daemon.client.add_watch(str(tmp_path / "lib"))
    wait_for(lambda: daemon.client.status().indexed == 1)
    odd = os.fsdecode(os.fsencode(str(tmp_path / "lib")) + b"/caf\xe9.wav")
    said = vibrary("tags", "--json", odd, str(good), home=daemon.home)
    lines = {line["path"]: line for line in json_lines(said.stdout)}
    assert lines[str(good)]["tags"][0]["tag"] == "low" and "not valid UTF-8" in lines[odd]["error"], said


def test_a_home_that_is_a_file_is_said_so(tmp_path: Path) -> None:
    """`VIBRARY_HOME` naming a file (or a folder under one) said "[Errno 17] File exists: '…'", and a link to a
    drive not plugged in was said to be a file."""
    (tmp_path / "unplugged").symlink_to(tmp_path / "Volumes" / "Samples")
    said = vibrary("tag", "--json", str(tmp_path / "x.wav"), home=tmp_path / "unplugged", check=False)
    assert said.returncode == 1 and f"links to {tmp_path / 'Volumes' / 'Samples'}, which is not there" in said.stderr
    (tmp_path / "afile").write_text("")
    for home in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        said = vibrary("tag", "--json", str(tmp_path / "x.wav"), home=home, check=False)
        assert said.returncode == 1 and json_lines(said.stdout) == [
            {
                "error": f"{tmp_path / 'afile'} is a file, so the home {home} cannot be a folder: set VIBRARY_HOME to a"
                " folder",
                "exit_status": 1,
            }
        ], said.stdout


def test_status_lists_the_newest_failures_says_how_many_more_and_lists_all_when_asked(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """`status` listed 5 of 10 failures and said nothing of the others, which only `tags` of the whole library
    showed among its thousands of lines."""
    library = tmp_path / "library"
    for i in range(7):
        (library / f"broken_{i}.wav").parent.mkdir(exist_ok=True)
        (library / f"broken_{i}.wav").write_text("not audio")
    daemon.client.add_watch(str(library))
    wait_for(lambda: daemon.client.status().failed == 7)
    human = vibrary("status", home=daemon.home).stdout
    assert human.count("broken_") == 5 and "… and 2 more (`vibrary status --failed` lists them all)" in human, human
    said = json_lines(vibrary("status", "--failed", "--json", home=daemon.home).stdout)[0]["recent_failures"]
    assert sorted(f["path"] for f in said) == sorted(str(library / f"broken_{i}.wav") for i in range(7))
    every = vibrary("status", "--failed", home=daemon.home).stdout
    assert every.count("broken_") == 7 and "more" not in every, every


def test_search_finds_a_tag_by_its_words_otherwise_joined_and_by_a_spelling_of_the_same_sound(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A tag renamed to "gritty sound" is stored gritty-sound, and `search gritty sound` found nothing (did you
    mean 'gritty-sound'?); a model trained on dry and distorted, which `synonyms list` reads as clean and
    distortion, was not found by `search clean` (did you mean 'clap'?). Never another sound, though: the table
    reads lead and pad alike (synth), and conga, cowbell and shaker (percussion); c# is no c."""
    fx = band_model(tmp_path / "fx.onnx", name="fx", classes=("dry", "distorted", "gritty-sound"))
    vibrary("models", "install", str(fx), home=daemon.home)
    clips = {band: write_tone(tmp_path / f"{band}.wav", freq) for band, freq in BANDS.items()}
    list(daemon.client.tag([str(p) for p in clips.values()]))

    def found(*query: str) -> tuple[set[str], str]:
        run = vibrary("search", "--json", "--model", "fx", *query, home=daemon.home)
        return {Path(x["path"]).stem for x in json_lines(run.stdout)}, run.stderr

    said = "vibrary: searched 'gritty sound' as 'gritty-sound', the tag it spells\n"
    assert found("gritty", "sound") == found("gritty sound") == ({"high"}, said)
    assert found("clean") == ({"low"}, "vibrary: searched 'clean' as 'dry', the tag it spells\n")
    assert found("distortion")[0] == found("-clean", "-gritty sound")[0] == {"mid"}
    paths = [f.path for f in daemon.client.search("gritty sound", model="fx")]  # (Client.search reads it alike)
    assert paths == [f.path for f in daemon.client.search([["gritty-sound"]])] and len(paths) == 1
    leads = band_model(tmp_path / "leads.onnx", name="leads", classes=("lead", "pad", "lofi-808"))  # (aliases of synth)
    vibrary("models", "install", str(leads), home=daemon.home)
    wait_for(lambda: [f.path for f in daemon.client.search([["lead"]], model="leads")] == [str(clips["low"])])
    for word, tag in (("leads", "lead"), ("pads", "pad"), ("lofi808", "lofi-808")):  # a plural, words joined
        run = vibrary("search", "--json", "--model", "leads", word, home=daemon.home)
        assert len(json_lines(run.stdout)) == 1 and f"searched {word!r} as {tag!r}" in run.stderr, run.stderr
    assert [f.path for f in daemon.client.search("leads", model="leads")] == [str(clips["low"])]  # (one word too)
    vibrary("synonyms", "add", "leads", "pad", home=daemon.home)  # the user's own alias, before a plural
    assert "searched 'leads' as 'pad'" in vibrary("search", "--model", "leads", "leads", home=daemon.home).stderr
    for classes, words in (
        (("c", "pad", "conga"), ("c#", "c♯", "lead", "cs", "ces")),
        (("conga", "shaker", "d"), ("percussion", "d♭")),
    ):
        other = band_model(tmp_path / "other.onnx", name="other", classes=classes)
        vibrary("models", "install", str(other), home=daemon.home)
        for word in words:
            run = vibrary("search", "--json", "--model", "other", word, home=daemon.home)
            assert json_lines(run.stdout) == [] and "searched" not in run.stderr, (word, run.stderr)


def test_the_daemon_log_deleted_under_it_is_written_anew(tmp_path: Path) -> None:
    """A cleanup of the home deleted daemon.log, and the daemon wrote on to the deleted file until it stopped."""
    import logging

    from vibrary.clients.daemon_commands import _file_log

    handler = _file_log(tmp_path)
    log = logging.getLogger("test.reopened")
    log.addHandler(handler)
    try:
        log.warning("first")
        (tmp_path / "daemon.log").unlink()
        log.warning("after the delete")
        (tmp_path / "daemon.log").rename(tmp_path / "moved.log")
        log.warning("after a move")
        assert (tmp_path / "daemon.log").read_text() == "after a move\n"
        assert (tmp_path / "moved.log").read_text() == "after the delete\n"
    finally:
        log.removeHandler(handler)
        handler.close()
