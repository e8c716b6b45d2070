"""The watcher on its own, with a real index and a real inotify observer: what it records when the
index cannot be written for a moment, and what it stops recording when a folder is unwatched."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vibrary.daemon import lost_watches
from vibrary.daemon import watch as watch_module
from vibrary.daemon.decode import DecodeError, FileVanished, check_readable
from vibrary.daemon.features import changed_at
from vibrary.daemon.index import WATCH_GONE, Index, Result
from vibrary.daemon.watch import Watcher
from watchdog.events import FileClosedEvent

from tests.conftest import wait_for


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    index = Index(tmp_path / "index.sqlite")
    yield index
    index.close()


def _watcher(index: Index) -> Watcher:
    return Watcher(index, settle_s=0.0, on_pending=lambda: None, on_removed=lambda paths: None)


def _started(index: Index, tmp_path: Path) -> tuple[Watcher, Path]:
    """A watcher started on a folder `lib` of its own."""
    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    w.watch(str(lib))
    w.start()
    return w, lib


def _pending(index: Index) -> set[str]:
    return {job.path for job in index.due_jobs(100_000, set(), 1e12)}


def test_events_buffered_while_the_index_is_locked_are_written_later(index: Index, tmp_path: Path) -> None:
    """A flush that cannot write (another process holds the database) keeps its events for the next one;
    it used to drop them, and the files waited for the next start's scan. (Not started: no flush but
    this test's own.)"""
    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    index.conn().execute("PRAGMA busy_timeout = 50")  # this thread's connection: give up fast
    blocker = sqlite3.connect(index.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    path = str(lib / "kick.wav")
    w.on_any_event(FileClosedEvent(path))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        w.flush()
    blocker.execute("ROLLBACK")
    blocker.close()
    w.flush()
    assert _pending(index) == {path}


def test_a_folder_unwatched_during_its_first_scan_leaves_nothing_behind(index: Index, tmp_path: Path) -> None:
    """The scan of a big folder stops when the folder is unwatched, so the index forgets it for good: it
    used to go on marking files, which then were tagged and found though no watch covered them."""
    w = _watcher(index)
    w.start()
    lib = tmp_path / "big"
    for d in range(40):
        folder = lib / f"pack{d:02d}"
        folder.mkdir(parents=True)
        for i in range(100):
            (folder / f"s{i:03d}.wav").write_bytes(b"")
    index.add_watch(str(lib))
    w.watch(str(lib))
    w.unwatch(str(lib))
    assert index.remove_watch(str(lib)) is not None
    wait_for(lambda: w.scans_running == 0)
    w.stop()
    assert _pending(index) == set()


def test_a_drive_unmounted_from_a_mount_point_that_stays_keeps_its_rows(index: Index, tmp_path: Path) -> None:
    """A drive unmounted from a mount point that stays (an fstab one) leaves it empty: a scan found every file
    gone, the index forgot the whole drive, and the next mount hashed all of it again. A real tmpfs here."""
    drive = tmp_path / "drive"
    drive.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(drive)], capture_output=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    mounted = True
    try:
        (drive / "Kicks").mkdir()
        for name in ("Kicks/a.wav", "b.wav"):
            (drive / name).write_bytes(b"RIFF")
        w = _watcher(index)
        w.watch(str(drive))  # (not started: no events, this test's scans only)
        wait_for(lambda: w.scans_running == 0)
        known = _pending(index)
        assert len(known) == 2 and not w.gone(str(drive))
        subprocess.run(["umount", str(drive)], check=True)
        mounted = False
        assert w.gone(str(drive)) and w.missing == {str(drive)}  # (status says so; searches leave them out)
        w.scan(str(drive))
        assert _pending(index) == known
        (drive / "new.wav").write_bytes(b"RIFF")  # written onto the bare mount point: not the drive either
        w.scan(str(drive))
        assert _pending(index) == known
    finally:
        if mounted:
            subprocess.run(["umount", str(drive)], check=False)


def test_a_flush_that_keeps_failing_backs_off_and_says_so_once(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An index deleted or full under the running daemon: every 20 ms a traceback, 50 a second, for ever."""
    calls: list[float] = []
    real = index.mark_pending

    def failing(items: object) -> int:
        calls.append(time.monotonic())
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(index, "mark_pending", failing)
    w, lib = _started(index, tmp_path)
    try:
        w.on_any_event(FileClosedEvent(str(lib / "kick.wav")))
        time.sleep(1.5)
        assert 3 <= len(calls) <= 12  # 75 at the old pace
        assert len([r for r in caplog.records if "could not write changes in the watch" in r.message]) == 1
        assert w.unwritable == "disk I/O error"  # said in status
        monkeypatch.setattr(index, "mark_pending", real)
        wait_for(lambda: _pending(index) == {str(lib / "kick.wav")}, timeout=10)  # not lost meanwhile
        assert w.unwritable == ""
    finally:
        w.stop()


def test_an_idle_watcher_sleeps_until_an_event_comes(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its flush loop woke every 20 ms with nothing to write, 50 wake-ups a second on a laptop's battery
    for a library nobody touches; an event still reaches the index at once."""
    flushes: list[float] = []
    real = Watcher.flush
    mine: list[Watcher] = []  # (another test's watcher still winding down in this process flushes too)

    def counted(self: Watcher) -> None:
        if self in mine:
            flushes.append(time.monotonic())
        real(self)

    monkeypatch.setattr(Watcher, "flush", counted)
    w, lib = _started(index, tmp_path)
    mine.append(w)
    try:
        wait_for(lambda: w.scans_running == 0)
        time.sleep(1.0)
        idle = len(flushes)
        assert idle <= 1  # at most the check of the watch folders, due every 5 s (about 50 at the old pace)
        w.on_any_event(FileClosedEvent(str(lib / "kick.wav")))
        wait_for(lambda: _pending(index) == {str(lib / "kick.wav")}, timeout=2)
    finally:
        w.stop()


def test_a_name_given_another_file_is_read_again_unless_the_drive_makes_inodes_up(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two one-shots of one size and mtime renumbered while the daemon was down: the inode tells (and the
    ctime the renames moved). FAT and exFAT make inode numbers up at each mount, so there a changed inode
    alone would read the whole drive again at every start: it is not compared."""
    lib = tmp_path / "lib"
    lib.mkdir()
    a, b = lib / "kick_01.wav", lib / "kick_02.wav"
    a.write_bytes(b"A" * 100)
    b.write_bytes(b"B" * 100)
    for f in (a, b):
        os.utime(f, ns=(10**18, 10**18))
        index.mark_pending([(str(f), 0.0)])

    def indexed(inode_shift: int) -> None:
        for job in index.due_jobs(10, set(), 1e12):
            st = os.stat(job.path)
            result = Result(
                job,
                size=st.st_size,
                mtime_ns=changed_at(st),
                inode=st.st_ino + inode_shift,
                hash=job.path.encode()[-16:],
            )
            assert index.write_results([result], 0.02) == [result]

    def scanned() -> set[str]:
        w = _watcher(index)
        w.watch(str(lib))
        wait_for(lambda: w.scans_running == 0)
        w.unwatch(str(lib))
        return _pending(index)

    indexed(0)
    assert scanned() == set()
    index.set_inodes([(os.stat(f).st_ino + 1000, str(f)) for f in (a, b)])  # as a FAT drive's next mount numbers them
    with monkeypatch.context() as fat:  # this folder's drive as a FAT drive: its inode numbers say nothing
        fat.setattr(watch_module, "_stable_inodes", lambda: lambda dev: False)
        assert scanned() == set()
    assert scanned() == {str(a), str(b)}  # elsewhere they do
    indexed(0)
    os.rename(a, lib / "swap")
    os.rename(b, a)
    os.rename(lib / "swap", b)
    assert scanned() == {str(a), str(b)}


def test_drives_that_make_inode_numbers_up_are_known_by_their_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
        "36 22 8:17 / /media/usb rw,nosuid shared:9 - vfat /dev/sdb1 rw,fmask=0022\n"
        "37 22 8:33 / /media/SAMPLES\\040DRIVE rw shared:10 - exfat /dev/sdc1 rw\n"
    )
    monkeypatch.setattr(watch_module, "MOUNTINFO", str(mountinfo))
    stable = watch_module._stable_inodes()
    assert stable(os.makedev(259, 2)) and not stable(os.makedev(8, 17)) and not stable(os.makedev(8, 33))


def test_a_name_that_is_not_utf8_is_left_out_and_said_once_and_the_rest_is_recorded(
    index: Index, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Such a name (unpacked from an old archive) cannot be stored in the index: it used to stop every later
    event from being recorded (the flush kept failing on it) and the scan of its watch folder."""
    lib = tmp_path / "lib"
    for folder in ("a", "z"):
        (lib / folder).mkdir(parents=True)
        (lib / folder / "k.wav").write_bytes(b"x")
    raw = os.fsencode(lib)
    os.mkdir(os.path.join(raw, b"d\xe9mo"))
    for name in (b"z/caf\xe9.wav", b"d\xe9mo/s.wav"):
        _write(os.path.join(raw, name))
    w = _watcher(index)
    w.start()
    try:
        w.watch(str(lib))
        wait_for(lambda: w.scans_running == 0)
        assert _pending(index) == {str(lib / "a" / "k.wav"), str(lib / "z" / "k.wav")}
        _write(os.path.join(raw, b"late\xe9.wav"))  # while watched: then a file after it
        (lib / "next.wav").write_bytes(b"x")
        wait_for(lambda: str(lib / "next.wav") in _pending(index))
        os.rename(os.path.join(raw, b"late\xe9.wav"), lib / "renamed.wav")  # to a name it can hold
        wait_for(lambda: str(lib / "renamed.wav") in _pending(index))
        os.rename(lib / "next.wav", os.path.join(raw, b"n\xe9xt.wav"))  # away to one it cannot
        wait_for(lambda: str(lib / "next.wav") not in _pending(index))
        os.rename(os.path.join(raw, b"n\xe9xt.wav"), os.path.join(raw, b"n\xe9xt2.wav"))  # from one to another
        _write(os.path.join(os.fsencode(tmp_path), b"out\xe9.wav"))
        os.rename(os.path.join(os.fsencode(tmp_path), b"out\xe9.wav"), os.path.join(raw, b"in\xe9.wav"))  # moved in
        os.mkdir(os.path.join(raw, b"new\xe9"))  # a folder made while watched
        (lib / "last.wav").write_bytes(b"x")
        wait_for(lambda: str(lib / "last.wav") in _pending(index))
        # both sides unstorable once read as "from nowhere to nowhere", and removed every path there is
        assert {str(lib / n) for n in ("a/k.wav", "z/k.wav", "renamed.wav")} <= _pending(index)
        left_out = w.unnamed  # as status shows them: those still there, \xNN for the bytes that are not UTF-8
        assert f"{lib}/z/caf\\xe9.wav" in left_out and f"{lib}/d\\xe9mo" in left_out, left_out
        assert not any("late" in name for name in left_out)  # renamed since, to a name it can hold
        w.unwatch(str(lib))
        assert w.unnamed == []  # no watch holds them now
    finally:
        w.stop()
    said = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(said) == len(set(said)) >= 3 and any("caf\\xe9.wav" in m for m in said)
    assert not [r for r in caplog.records if r.exc_info], "a traceback instead of one line"


def _write(path: bytes) -> None:
    with open(path, "wb") as f:
        f.write(b"x")


def test_mac_metadata_an_older_version_indexed_leaves_the_index_at_the_next_scan(index: Index, tmp_path: Path) -> None:
    junk = tmp_path / "lib" / "Pack" / "__MACOSX" / "Kicks"
    junk.mkdir(parents=True)
    (junk / "._k.wav").write_bytes(b"x")
    (tmp_path / "lib" / "Pack" / "k.wav").write_bytes(b"x")
    index.mark_pending([(str(junk / "._k.wav"), 0.0), (str(tmp_path / "lib" / "Pack" / "k.wav"), 0.0)])
    w = _watcher(index)
    w.watch(str(tmp_path / "lib"))
    wait_for(lambda: w.scans_running == 0)
    assert _pending(index) == {str(tmp_path / "lib" / "Pack" / "k.wav")}


def test_samples_moved_to_a_trash_folder_leave_the_index_and_come_back_when_restored(
    index: Index, tmp_path: Path
) -> None:
    """A watched drive's root holds its file managers' trash (Linux `.Trash-1000/files/`, macOS `.Trashes/501/`,
    Windows `$RECYCLE.BIN/`): a sample deleted there was moved into it, indexed, and found by every search."""
    w, lib = _started(index, tmp_path)
    (lib / "Kicks").mkdir()
    (lib / "Snares").mkdir()
    for name in ("a.wav", "b.wav"):
        (lib / "Kicks" / name).write_bytes(b"K" * 100)
    (lib / "Snares" / "s.wav").write_bytes(b"S" * 100)
    (lib / ".Trash-1000" / "files").mkdir(parents=True)
    (lib / ".Trashes" / "501").mkdir(parents=True)
    (lib / "$RECYCLE.BIN").mkdir()
    (lib / "$RECYCLE.BIN" / "old.wav").write_bytes(b"O" * 100)  # trashed before the watch: never read
    nas = {"#snapshot/GMT+01_2026-12-01/Kicks/a.wav", "@eaDir/Kicks/a.wav/SYNO.wav", ".AppleDouble/a.wav"}
    for junk in nas:  # a NAS's snapshots (the library again) and its metadata (no audio): never read either
        (lib / junk).parent.mkdir(parents=True, exist_ok=True)
        (lib / junk).write_bytes(b"N" * 100)
    everything = {str(lib / "Kicks" / "a.wav"), str(lib / "Kicks" / "b.wav"), str(lib / "Snares" / "s.wav")}
    wait_for(lambda: _pending(index) == everything)
    os.rename(lib / "Kicks" / "a.wav", lib / "Kicks" / ".Trash-a.wav")  # a file so named is no trash folder
    everything = everything - {str(lib / "Kicks" / "a.wav")} | {str(lib / "Kicks" / ".Trash-a.wav")}
    wait_for(lambda: _pending(index) == everything)
    os.rename(lib / "Kicks" / ".Trash-a.wav", lib / "Kicks" / "a.wav")
    os.rename(lib / "Kicks" / "a.wav", lib / ".Trash-1000" / "files" / "a.wav")
    os.rename(lib / "Kicks" / "b.wav", lib / ".Trashes" / "501" / "b.wav")
    os.rename(lib / "Snares", lib / "$RECYCLE.BIN" / "Snares")  # a folder deleted whole
    wait_for(lambda: _pending(index) == set())
    assert sum(index.counts().values()) == 0  # no row left, under the trash either
    os.rename(lib / "$RECYCLE.BIN" / "Snares", lib / "Snares")  # restored
    wait_for(lambda: _pending(index) == {str(lib / "Snares" / "s.wav")})
    w.stop()
    again = _watcher(index)  # a start's scan leaves the trash out as well
    again.watch(str(lib))
    wait_for(lambda: again.scans_running == 0)
    assert _pending(index) == {str(lib / "Snares" / "s.wav")}


def test_files_that_found_their_watch_folder_gone_are_read_once_it_is_back_though_no_check_saw_it_go(
    index: Index, tmp_path: Path
) -> None:
    """A watch folder renamed away and back within a second, as a file in it was read: the file waits for
    its folder (WATCH_GONE), but no check of the watcher saw the folder go, nor come back, so it waited a
    minute (RETRY_S), said to wait for a folder that was there all along."""
    w, lib = _started(index, tmp_path)
    (lib / "a.wav").write_bytes(b"A" * 100)
    wait_for(lambda: _pending(index) == {str(lib / "a.wav")})
    (job,) = index.due_jobs(10, set(), 1e12)
    index.write_results([Result(job, error=WATCH_GONE, retry_for=math.inf)], 0.02)  # as the daemon keeps it

    def due_now() -> set[str]:
        return {job.path for job in index.due_jobs(10, set(), time.time())}

    assert due_now() == set()  # (a minute from now)
    w.await_back(str(lib))
    wait_for(lambda: due_now() == {str(lib / "a.wav")}, timeout=15)  # the next check: within 5 s
    w.stop()


def test_events_lost_to_an_overflowing_queue_are_caught_up_by_a_scan(index: Index, tmp_path: Path) -> None:
    """When inotify's queue overflows (a starved daemon, thousands of touches), watchdog says so with one
    event, which nothing handled: the changes were lost until the next start. (Not started: the observer
    delivers nothing, as after an overflow; the event is handed over as watchdog would.)"""
    from watchdog.events import EventsLostEvent

    assert EventsLostEvent in watch_module.EVENTS  # asked for: a filtered watch is not sent it otherwise
    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "gone.wav").write_bytes(b"")
    index.add_watch(str(lib))
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    assert _pending(index) == {str(lib / "gone.wav")}
    (lib / "gone.wav").unlink()
    (lib / "new.wav").write_bytes(b"")
    w.on_any_event(EventsLostEvent(str(lib), is_directory=True))
    wait_for(lambda: w.scans_running == 0)
    assert _pending(index) == {str(lib / "new.wav")}


def test_a_file_back_since_its_folder_was_listed_keeps_its_row(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move out of a watch and back in (across two watches, in a burst of reorganising) arrives as two
    events, the first up to half a second late: a scan that listed the folder meanwhile removed the row
    of a file that was there again, and it stayed unindexed. The listing is played here as the scan sees
    it, with the file back the moment after."""
    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    kick = lib / "kick.wav"
    kick.write_bytes(b"")
    index.add_watch(str(lib))
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    real_scandir = os.scandir

    def listed_while_away(path: str) -> list[os.DirEntry[str]]:
        kick.rename(tmp_path / "away.wav")
        entries = list(real_scandir(path))
        (tmp_path / "away.wav").rename(kick)
        return entries

    monkeypatch.setattr(watch_module.os, "scandir", listed_while_away)
    w.scan(str(lib))
    monkeypatch.undo()
    assert _pending(index) == {str(kick)}


def test_a_burst_of_overflows_scans_each_watch_once_more_not_once_each(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overflow is said once per watch, and overflows come in bursts: five on eight watches started
    forty full scans at once. A watch being scanned again is scanned once more after, whatever came."""
    from watchdog.events import EventsLostEvent

    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    scans: list[str] = []

    def slow_scan(folder: str) -> None:
        scans.append(folder)
        time.sleep(0.3)

    monkeypatch.setattr(w, "scan", slow_scan)
    for _ in range(5):
        w.on_any_event(EventsLostEvent(str(lib), is_directory=True))
    wait_for(lambda: w.scans_running == 0)
    assert scans == [str(lib), str(lib)]


def test_a_link_whose_target_is_deleted_is_read_again_at_the_next_scan(index: Index, tmp_path: Path) -> None:
    """No event reaches the watch when a linked file's target goes; its row stayed at every scan, with its
    old tags. Read again, it fails, and says why (dropped from the index, it was gone from status too)."""
    w = _watcher(index)
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "kick.wav").write_bytes(b"")
    (lib / "link.wav").symlink_to(tmp_path / "kick.wav")
    index.add_watch(str(lib))
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    assert _pending(index) == {str(lib / "link.wav")}
    (job,) = index.due_jobs(10, set(), 1e12)
    index.write_results([Result(job, size=0, mtime_ns=1, hash=b"k" * 16)], 0.02)
    assert _pending(index) == set()
    (tmp_path / "kick.wav").unlink()
    w.scan(str(lib))
    assert _pending(index) == {str(lib / "link.wav")}
    with pytest.raises(DecodeError, match=r"broken symbolic link: .*kick\.wav is not there") as why:
        check_readable(str(lib / "link.wav"))
    assert not isinstance(why.value, FileVanished)


def test_a_broken_link_is_read_once_its_target_is_back(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs kept on another drive, linked into the library: with the drive not mounted each link failed,
    and it stayed failed once the drive was back (no event comes for a link), until a rescan hours later."""
    monkeypatch.setattr(watch_module, "CHECK_S", 0.1)
    monkeypatch.setattr(watch_module, "LINKS_S", 0.3)
    drive, lib = tmp_path / "drive", tmp_path / "lib"
    lib.mkdir()
    (lib / "kick.wav").symlink_to(drive / "kick.wav")
    (lib / "snare.wav").symlink_to(drive / "snare.wav")
    index.add_watch(str(lib))
    w = _watcher(index)
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    jobs = index.due_jobs(10, set(), 1e12)
    assert sorted(j.path for j in jobs) == [str(lib / "kick.wav"), str(lib / "snare.wav")]
    for job in jobs:
        with pytest.raises(DecodeError) as why:
            check_readable(job.path)
        index.write_results([Result(job, error=str(why.value))], 0.02)
    w.start()
    try:
        time.sleep(0.6)  # looked for, not there: they stay failed
        assert _pending(index) == set() and len(index.failures()) == 2
        drive.mkdir()
        (drive / "kick.wav").write_bytes(b"RIFF")  # the drive is back with one of them
        wait_for(lambda: _pending(index) == {str(lib / "kick.wav")}, timeout=5)
        assert [p for p, _ in index.failures()] == [str(lib / "snare.wav")]
    finally:
        w.stop()


def test_links_deleted_or_left_by_a_removed_watch_are_forgotten(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every link to a folder ever met stayed in memory: a library relinked for months kept them all."""
    monkeypatch.setattr(watch_module, "CHECK_S", 0.1)
    monkeypatch.setattr(watch_module, "LINKS_S", 0.3)
    drive, lib, other = tmp_path / "drive", tmp_path / "lib", tmp_path / "other"
    for folder in (drive, lib, other):
        folder.mkdir()
    for i in range(3):
        (lib / f"pack{i}").symlink_to(drive, target_is_directory=True)
    (other / "pack").symlink_to(drive, target_is_directory=True)
    w = _watcher(index)
    for folder in (lib, other):
        index.add_watch(str(folder))
        w.watch(str(folder))
    w.start()
    try:
        wait_for(lambda: len(w.unfollowed_links) == 4)
        (lib / "pack0").unlink()
        w.unwatch(str(other))
        wait_for(lambda: sorted(w._links) == [str(lib / "pack1"), str(lib / "pack2")], timeout=5)
        assert [link for link, _ in w.unfollowed_links] == [str(lib / "pack1"), str(lib / "pack2")]
    finally:
        w.stop()


def test_a_file_the_daemon_may_not_read_is_read_once_it_may(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its permission mended without the file changing (the daemon's user put in its group, a share's rights
    changed on the server): no event comes, no scan sees a change, and it stayed failed for good."""
    monkeypatch.setattr(watch_module, "CHECK_S", 0.1)
    monkeypatch.setattr(watch_module, "LINKS_S", 0.3)
    allowed: set[str] = set()
    monkeypatch.setattr(watch_module, "_readable", lambda path: path in allowed)  # (root may read any file)
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("kick.wav", "snare.wav"):
        (lib / name).write_bytes(b"RIFF")
    index.add_watch(str(lib))
    w = _watcher(index)
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    for job in index.due_jobs(10, set(), 1e12):
        st = os.stat(job.path)
        index.write_results([Result(job, size=st.st_size, mtime_ns=changed_at(st), error="permission denied")], 0.02)
    w.start()
    try:
        time.sleep(0.6)  # looked at, still not readable: they stay failed
        assert _pending(index) == set() and len(index.failures()) == 2
        allowed.add(str(lib / "kick.wav"))
        wait_for(lambda: _pending(index) == {str(lib / "kick.wav")}, timeout=5)
        assert [p for p, _ in index.failures()] == [str(lib / "snare.wav")]
    finally:
        w.stop()


def test_the_missing_watches_are_read_while_the_watcher_writes(index: Index, tmp_path: Path) -> None:
    """Every Search, CountTags and Tag asks which watch folders are missing; that waited on the lock the
    watcher holds while it writes events to the index (a second or more after a copy of thousands of files),
    so a plug-in's search waited as long."""
    import threading

    w = _watcher(index)
    gone = tmp_path / "unplugged"
    w.watch(str(gone))  # not there: missing
    answers: list[set[str]] = []
    with w._lock:  # as during a long write
        asking = threading.Thread(target=lambda: answers.append(w.missing))
        asking.start()
        asking.join(timeout=5)
        assert answers == [{str(gone)}]  # answered while the lock is held
    asking.join()


def test_scans_of_folders_copied_in_leave_no_index_connection_open(index: Index, tmp_path: Path) -> None:
    """Each folder made under a watch is scanned in a thread of its own, whose index connection stayed open
    after it (until the garbage collector came by): a copy of 500 folders held hundreds of open files, and at
    macOS's limit of 256 thousands of files failed with "Too many open files" (a QA session)."""
    import gc

    def open_on_index() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).startswith(str(tmp_path / "index.sqlite")))

    lib = tmp_path / "lib"
    lib.mkdir()
    w = _watcher(index)
    w.start()
    gc.disable()  # as a busy daemon between collections
    try:
        w.watch(str(lib))
        wait_for(lambda: w.scans_running == 0)
        before = open_on_index()
        for i in range(60):
            (lib / f"pack{i}").mkdir()
            (lib / f"pack{i}" / "k.wav").write_bytes(b"x")
        wait_for(lambda: len(_pending(index)) == 60, timeout=30)
        wait_for(lambda: w.scans_running == 0)
        time.sleep(0.2)  # the scan threads end
        assert open_on_index() - before < 20  # (the flusher's own connection, opened at the first event) vs 180
    finally:
        gc.enable()
        w.stop()


def test_folders_made_at_once_are_scanned_in_turn_and_none_is_missed(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpacking a pack of thousands of folders started a thread per folder, all at once (and a folder whose
    thread could not start lost its files until the next start): one thread scans them in turn. Scans are
    slowed here so that, a thread each, they would overlap whatever the machine's speed."""
    import threading

    running, most = 0, 0
    count = threading.Lock()
    scan = Watcher.scan

    def slow_scan(self: Watcher, folder: str) -> None:
        nonlocal running, most
        with count:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.02)
            scan(self, folder)
        finally:
            with count:
                running -= 1

    w, lib = _started(index, tmp_path)
    try:
        wait_for(lambda: w.scans_running == 0)
        monkeypatch.setattr(Watcher, "scan", slow_scan)
        most = 0
        made = []
        for i in range(60):
            (lib / f"kit{i:02d}" / "one shots").mkdir(parents=True)  # inside a new one: left to the outer's scan
            made.append(lib / f"kit{i:02d}" / "one shots" / "hit.wav")
            made[-1].write_bytes(b"RIFF")

        def all_pending() -> bool:  # (scans_running was 0 at once, under load, before the events were even read)
            w.flush()
            return {str(f) for f in made} <= _pending(index)

        wait_for(all_pending, timeout=30)
        wait_for(lambda: w.scans_running == 0, timeout=30)
        assert most == 1, most
    finally:
        w.stop()


def test_a_folder_renamed_while_it_waits_for_its_scan_is_scanned_under_its_new_name(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack moved in waits behind another folder's scan, gets a file of its own, and is renamed: the move
    of that file's row counted as the folder's move, and the pack's files were never read (until the next
    start). The other folder's scan is slowed so that the pack waits."""
    scan = Watcher.scan

    def slow_scan(self: Watcher, folder: str) -> None:
        if os.path.basename(folder) == "big":
            time.sleep(1.0)
        scan(self, folder)

    w, lib = _started(index, tmp_path)
    try:
        wait_for(lambda: w.scans_running == 0)
        monkeypatch.setattr(Watcher, "scan", slow_scan)
        (lib / "big").mkdir()
        pack = tmp_path / "pack"
        pack.mkdir()
        for name in ("a.wav", "b.wav"):
            (pack / name).write_bytes(b"RIFF")
        os.rename(pack, lib / "pack")  # moved in: one event for the folder, queued behind big
        time.sleep(0.2)
        (lib / "pack" / "late.wav").write_bytes(b"RIFF")
        time.sleep(0.2)
        assert w.scans_running == 2  # big, and the pack still waiting
        os.rename(lib / "pack", lib / "renamed")
        wait_for(lambda: w.scans_running == 0, timeout=30)
        w.flush()
        assert {str(lib / "renamed" / n) for n in ("a.wav", "b.wav", "late.wav")} <= _pending(index)
    finally:
        w.stop()


def test_a_file_renamed_under_a_watch_inside_another_is_moved_once_not_read_again(index: Index, tmp_path: Path) -> None:
    """`watch add` of a pack inside a library already watched is allowed (the CLI says it is covered): both
    folders' observers saw each event under the pack, and the second of a rename's two moves found no row
    under the old name, so the file was read again as new; a folder renamed there was scanned again."""
    lib = tmp_path / "lib"
    pack = lib / "pack"
    (pack / "drums").mkdir(parents=True)
    kick = pack / "drums" / "kick.wav"
    kick.write_bytes(b"K" * 100)  # before the watch: found by its scan, no event of it still on its way
    w = _watcher(index)
    w.watch(str(lib))
    w.start()
    w.watch(str(pack))
    wait_for(lambda: w.scans_running == 0 and _pending(index) == {str(kick)})
    for job in index.due_jobs(10, set(), 1e12):
        st = os.stat(job.path)
        result = Result(job, size=st.st_size, mtime_ns=changed_at(st), inode=st.st_ino, hash=b"k" * 16)
        assert index.write_results([result], 0.02) == [result]
    assert _pending(index) == set()
    os.rename(kick, pack / "drums" / "kick 2.wav")
    os.rename(pack / "drums", pack / "Drums")
    moved = str(pack / "Drums" / "kick 2.wav")
    wait_for(lambda: [f.state for f in index.file_tags([moved])] == ["indexed"])  # (an unknown path: "unknown")
    time.sleep(0.3)  # the second observer's events, had they been handled, were flushed by now
    w.flush()
    assert [f.state for f in index.file_tags([str(lib)])] == ["indexed"] and _pending(index) == set()
    w.unwatch(str(lib))  # the pack's own observer takes over: a rename there is seen again
    os.rename(moved, pack / "kick.wav")
    wait_for(lambda: [f.state for f in index.file_tags([str(pack / "kick.wav")])] == ["indexed"])
    w.flush()
    assert [f.state for f in index.file_tags([str(lib)])] == ["indexed"] and _pending(index) == set()
    w.stop()


def test_a_folder_too_deep_to_list_stays_said_until_it_can_be_listed(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path longer than PATH_MAX (4096 bytes: packs nested in packs with long vendor names) cannot be
    listed; it was said in status for seconds, then taken for gone (isdir() is False for it too)."""
    monkeypatch.setattr(watch_module, "CHECK_S", 0.1)
    lib = tmp_path / "lib"
    lib.mkdir()
    fd = os.open(lib, os.O_RDONLY)
    try:  # made by relative steps: no path that long can be given whole
        for _ in range(22):
            os.mkdir("p" * 200, dir_fd=fd)
            inner = os.open("p" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    w = _watcher(index)
    w.watch(str(lib))
    w.start()
    try:
        wait_for(lambda: w.scans_running == 0 and len(w.unlisted) == 1)
        assert "File name too long" in w.unlisted[0]
        time.sleep(1.0)  # checked again ten times: still there, still not listable
        assert len(w.unlisted) == 1
        shutil.rmtree(lib / ("p" * 200))  # deleted: no longer said (it was, until a restart)
        wait_for(lambda: w.unlisted == [], timeout=5)
    finally:
        w.stop()


def test_a_folder_that_cannot_be_listed_keeps_the_rows_of_the_folders_under_it(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack unpacked by root with mode 700 (or a network drive timing out): the scan could not list it and
    said its rows were kept, then forgot the files of every folder under it, whose stat failed as well, as
    gone; they would be read again, hashes and all, once the folder opened up."""
    lib = tmp_path / "lib"
    kicks = lib / "Pack" / "Kicks"
    kicks.mkdir(parents=True)
    files = {str(f) for f in (lib / "top.wav", kicks / "k1.wav", kicks / "k2.wav")}
    for f in files:
        Path(f).write_bytes(b"x" * 100)
    w = _watcher(index)
    w.watch(str(lib))
    wait_for(lambda: w.scans_running == 0)
    assert _pending(index) == files
    pack = str(lib / "Pack")
    scandir, stat = os.scandir, os.stat

    def listing(path: str = ".") -> Iterator[os.DirEntry[str]]:
        if os.fspath(path) == pack:
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    def looking(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path).startswith(pack + os.sep):  # no search permission on the pack: nothing under it
            raise PermissionError(13, "Permission denied", path)
        return stat(path, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as denied:  # (root, as tests may run, reads every folder)
        denied.setattr(os, "scandir", listing)
        denied.setattr(os, "stat", looking)
        w.scan(str(lib))
    assert _pending(index) == files
    assert w.unlisted == [f"{pack} (Permission denied)"]
    shutil.rmtree(kicks)
    w.scan(str(lib))  # listed again, and the folder truly gone
    assert _pending(index) == {str(lib / "top.wav")}
    w.unwatch(str(lib))


def test_a_scan_whose_thread_cannot_start_waits_for_one(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit on threads: the scan was counted as running for good, `status --wait` never ended and the
    periodic rescans (which wait for no scan to run) never came again. It waits for a thread, and runs.
    Followers are told it waits: the count went 1 → 0 → 1, and only its 0 was said (`Status.scanning`)."""
    said: list[int] = []
    w: Watcher = Watcher(
        index, settle_s=0.0, on_pending=lambda: said.append(w.scans_running), on_removed=lambda paths: None
    )
    w.start()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.wav").write_bytes(b"A" * 100)
    real_thread = w._thread

    def no_threads(work: Callable[[], None], name: str) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(w, "_thread", no_threads)
    for start in (lambda: w.watch(str(tmp_path / "lib")), lambda: w.rescan(str(tmp_path / "lib"))):
        start()
        assert w.scans_running == 1  # one scan waits for a thread, not one more for each try
        assert said[-1] == 1
    time.sleep(0.3)
    assert _pending(index) == set() and w.scans_running == 1
    monkeypatch.setattr(w, "_thread", real_thread)  # threads again: the check after starts it
    wait_for(lambda: w.scans_running == 0 and _pending(index) == {str(tmp_path / "lib" / "a.wav")})
    w.rescan(str(tmp_path / "lib"))  # and a rescan is no longer taken for one still running
    wait_for(lambda: w.scans_running == 0)
    w.stop()


def test_a_file_is_readable_again_only_when_it_opens(tmp_path: Path) -> None:
    """os.access said yes where opening still failed (a share's ACLs, an AppArmor rule): the file was read,
    and failed, every minute. What opens is readable; what is not there, or no file, is not."""
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    assert watch_module._readable(str(tmp_path / "a.wav"))
    assert not watch_module._readable(str(tmp_path / "gone.wav"))
    assert not watch_module._readable(str(tmp_path))


def test_a_file_written_just_before_its_folder_is_renamed_is_not_lost(index: Index, tmp_path: Path) -> None:
    """A pack unzipped and renamed at once: a file was read under its old path, "vanished", and its row was
    dropped before the folder's move was heard; the move took the other rows along and nothing looked for
    it (until the next start or rescan, hours later). Here its read ends before the rename, deterministically."""
    w, lib = _started(index, tmp_path)
    try:
        (lib / "Pack").mkdir()
        (lib / "Pack" / "old.wav").write_bytes(b"O" * 100)
        wait_for(lambda: _pending(index) == {str(lib / "Pack" / "old.wav")})
        for job in index.due_jobs(10, set(), 1e12):
            st = os.stat(job.path)
            index.write_results([Result(job, size=st.st_size, mtime_ns=changed_at(st), hash=b"o" * 16)], 0.02)
        new = str(lib / "Pack" / "new.wav")
        (lib / "Pack" / "new.wav").write_bytes(b"N" * 100)
        wait_for(lambda: new in _pending(index))  # (old.wav may be again: an event of its write heard late)
        (job,) = [j for j in index.due_jobs(10, set(), 1e12) if j.path == new]
        index.write_results([Result(job, error="file not found", vanished=True)], 0.02)  # as if renamed meanwhile
        os.rename(lib / "Pack", lib / "Renamed")
        wait_for(lambda: w.scans_running == 0 and str(lib / "Renamed" / "new.wav") in _pending(index))
    finally:
        w.stop()


@pytest.mark.parametrize("how", ["back in at once", "above renamed"])
def test_a_folder_whose_watch_watchdog_dropped_is_watched_again(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """watchdog drops the watches of a folder moved out of the watch 0.5 s later, by its path then. Moved back
    in at once (inotify gives the inode its old watch number), or with a folder above it renamed meanwhile
    and that folder moved out later, the watch of a live folder went with them: nothing written there reached
    the index until a restart. The sleeps make watchdog's half second pass, or not, between the moves."""
    monkeypatch.setattr(watch_module, "CHECK_S", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    w, lib = _started(index, tmp_path)
    try:
        if how == "back in at once":
            (lib / "P" / "D").mkdir(parents=True)
            (lib / "Q").mkdir()
            time.sleep(0.5)
            os.rename(lib / "P" / "D", out / "x")
            time.sleep(0.2)
            os.rename(out / "x", lib / "Q" / "E")
            probe = lib / "Q" / "E"
        else:
            (lib / "A" / "B" / "D").mkdir(parents=True)
            time.sleep(0.5)
            os.rename(lib / "A" / "B" / "D", out / "x")
            time.sleep(0.1)
            os.rename(lib / "A", lib / "A2")
            time.sleep(1.0)
            os.rename(out / "x", lib / "back")
            time.sleep(0.5)
            os.rename(lib / "A2", out / "y")
            probe = lib / "back"
        time.sleep(1.5)
        (probe / "sub").mkdir()
        made = [probe / "new.wav", probe / "sub" / "new2.wav"]
        for f in made:
            f.write_bytes(b"RIFF")
        wait_for(lambda: {str(f) for f in made} <= _pending(index), timeout=20)
    finally:
        w.stop()


def test_folders_still_watched_are_not_taken_for_lost(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel writes watch numbers in hex: read as decimal, every folder from the tenth on looked
    unwatched, and each folder moved in or out had the whole watch folder watched anew and scanned."""
    lib = tmp_path / "lib"
    for i in range(40):
        (lib / f"Pack {i:02d}").mkdir(parents=True)
    w, anew = _checked(index, lib, monkeypatch)
    try:
        os.rename(lib / "Pack 00", tmp_path / "away")  # a move out: the watches are checked a second after it
        wait_for(lambda: bool(w._moved_across))
        wait_for(lambda: not w._moved_across and not w._checking)  # (the check's thread ended)
        assert anew == []
    finally:
        w.stop()


def test_a_folder_renamed_onto_one_that_waits_is_checked_as_it_is_then(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renamed folder waits for its check behind another's; renamed away, and another renamed onto its path,
    the check of the first (a count of the rows that moved with it) was kept for the second, whose file
    without a row (read under its old name, "vanished") was never looked for. The check is made in its turn,
    of the files there then against the index's rows. (The other folder's check is held to keep them waiting.)"""
    import threading

    lib = tmp_path / "lib"
    for name, n in (("A", 3), ("D", 2), ("Z", 1)):
        (lib / name).mkdir(parents=True)
        for i in range(n):
            (lib / name / f"{name}{i}.wav").write_bytes(b"RIFF")
    w = _watcher(index)
    w.watch(str(lib))
    w.start()
    gate = threading.Event()
    all_known = Watcher._all_known

    def held(self: Watcher, folder: str) -> bool:
        if folder.endswith("Z2"):
            gate.wait(10)
        return all_known(self, folder)

    try:
        wait_for(lambda: w.scans_running == 0 and len(_pending(index)) == 6)
        index.remove_paths([str(lib / "D" / "D1.wav")])  # its row dropped: read under its old name, "vanished"
        monkeypatch.setattr(Watcher, "_all_known", held)
        os.rename(lib / "Z", lib / "Z2")  # the scan thread held on Z2
        wait_for(lambda: str(lib / "Z2") not in w._folders.get(str(lib), {}) and w.scans_running == 1)
        os.rename(lib / "A", lib / "B")
        wait_for(lambda: str(lib / "B") in w._folders.get(str(lib), {}))
        os.rename(lib / "B", lib / "C")
        os.rename(lib / "D", lib / "B")
        time.sleep(0.5)  # (the moves heard)
        gate.set()
        wait_for(lambda: w.scans_running == 0 and str(lib / "B" / "D1.wav") in _pending(index))
    finally:
        gate.set()
        w.stop()


def test_a_folder_found_unwatched_once_is_not_yet_lost(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder made by a copy still going on may not be watched yet when the check looks (watchdog adds the
    watch when it hears of the folder): each was a rewatch and a rescan of the whole library. A folder is
    lost when two checks in turn find it unwatched. (The kernel's answer is doctored to drop one folder.)"""
    lib = tmp_path / "lib"
    for name in ("P1", "P2", "P3"):
        (lib / name).mkdir(parents=True)
    hidden = os.stat(lib / "P1").st_ino
    real = lost_watches.inotify_inodes
    calls: list[int] = []

    def doctored(times: int) -> Callable[[], set[int] | None]:
        def inodes() -> set[int] | None:
            calls.append(1)
            found = real()
            return None if found is None else found - {hidden} if len(calls) <= times else found

        return inodes

    w, anew = _checked(index, lib, monkeypatch)
    try:
        for times, moved, expected in ((1, "P2", []), (10**6, "P3", [str(lib)])):
            calls.clear()
            monkeypatch.setattr(lost_watches, "inotify_inodes", doctored(times))
            os.rename(lib / moved, tmp_path / moved)
            wait_for(lambda: len(calls) >= 2 and not w._moved_across and not w._checking, timeout=20)
            assert anew == expected
    finally:
        w.stop()


def _checked(index: Index, lib: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Watcher, list[str]]:
    """A watcher started on lib, its scans done, that notes the watch folders it would watch anew (checked
    every second)."""
    monkeypatch.setattr(watch_module, "CHECK_S", 1.0)
    w = _watcher(index)
    anew: list[str] = []
    monkeypatch.setattr(w, "_watch_anew", anew.append)
    w.watch(str(lib))
    w.start()
    wait_for(lambda: w.scans_running == 0)
    return w, anew


def test_a_move_is_an_exchange_only_when_another_file_is_left_at_its_source(tmp_path: Path) -> None:
    """On a drive that ignores case (exFAT, vfat), `mv Kick.wav kick.wav` leaves the old spelling opening the
    same file: taken for an exchange, the file was indexed twice. (Here a hard link plays the old spelling.)"""
    kick, other = tmp_path / "kick.wav", tmp_path / "other.wav"
    kick.write_bytes(b"k")
    other.write_bytes(b"o")
    os.link(kick, tmp_path / "Kick.wav")
    assert not watch_module._exchanged(str(tmp_path / "Kick.wav"), str(kick))  # the same file: a rename
    assert watch_module._exchanged(str(other), str(kick))  # two files: exchanged
    assert not watch_module._exchanged(str(tmp_path / "gone.wav"), str(kick))  # the source gone: a rename


def _due_now(index: Index) -> set[str]:
    return {job.path for job in index.due_jobs(100_000, set(), time.time())}


def test_a_file_its_writer_keeps_open_waits_for_the_close_not_for_a_pause(index: Index, tmp_path: Path) -> None:
    """A copy stalled on a slow network drive, or a recorder between buffers, pauses longer than settle_s with
    the file open: it was read at each pause (failed "truncated", or tagged from half its sound) and again at
    the close. Written and not closed, it waits; closed, it is due at once."""
    w, lib = _started(index, tmp_path)
    path = lib / "take.wav"
    try:
        with open(path, "wb") as f:
            f.write(b"RIFF" + bytes(4096))
            f.flush()
            wait_for(lambda: _pending(index) == {str(path)})
            time.sleep(0.5)  # long past settle_s (0 here)
            assert _due_now(index) == set()
        wait_for(lambda: _due_now(index) == {str(path)})
        (lib / "copied.wav").write_bytes(b"RIFF")  # created, written and closed at once: due at once
        wait_for(lambda: str(lib / "copied.wav") in _due_now(index))
        with open(lib / "stalled.wav", "wb"):  # made, its first write yet to come: it was read as an empty file
            wait_for(lambda: str(lib / "stalled.wav") in _pending(index))
            time.sleep(0.5)
            assert str(lib / "stalled.wav") not in _due_now(index)
        wait_for(lambda: str(lib / "stalled.wav") in _due_now(index))  # closed empty: read, and said empty
    finally:
        w.stop()


def test_a_deletion_the_index_refused_is_found_by_a_scan_of_its_folder(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion is written at once, not buffered: one the index refused (locked past its busy timeout, a full
    disk) was logged and lost, and the deleted sample was found by searches until the next rescan, hours later."""
    monkeypatch.setattr(watch_module, "CHECK_S", 0.1)
    w, lib = _started(index, tmp_path)
    try:
        kick = lib / "kick.wav"
        kick.write_bytes(b"RIFF")
        wait_for(lambda: _pending(index) == {str(kick)})
        remove_paths, refused = index.remove_paths, list[list[str]]()

        def once_refused(paths: list[str]) -> list[str]:
            if not refused:
                refused.append(paths)
                raise sqlite3.OperationalError("database is locked")
            return remove_paths(paths)

        monkeypatch.setattr(index, "remove_paths", once_refused)
        kick.unlink()
        wait_for(lambda: refused and _pending(index) == set(), timeout=10)
    finally:
        w.stop()


def test_a_missing_folder_removed_as_its_drive_comes_back_is_not_watched_again(index: Index, tmp_path: Path) -> None:
    """The check retries the missing folders it listed: one removed by `watch remove` since (its drive came back
    meanwhile) was watched again, its files indexed under no watch that `watch list` shows or `remove` clears."""
    w = _watcher(index)
    drive = tmp_path / "drive"
    w.watch(str(drive))  # not there: missing
    assert w.missing == {str(drive)}
    w.unwatch(str(drive))  # removed by the user
    drive.mkdir()  # and back, as the check retries the folders it found missing before
    w.watch(str(drive), missing=True)
    assert w.missing == set() and not w.scans_running and _pending(index) == set()
    w.watch(str(drive))  # added again: watched
    wait_for(lambda: w.scans_running == 0)
    (drive / "kick.wav").write_bytes(b"RIFF")
    w.rescan(str(drive))
    wait_for(lambda: _pending(index) == {str(drive / "kick.wav")})


def test_a_link_to_a_folder_of_a_watch_registered_after_its_own_is_not_said_unfollowed(
    index: Index, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At each start the watches are registered one at a time: a link in the first to a folder of the second
    was logged as not followed, with advice to add a watch inside a watch."""
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "Keys").mkdir(parents=True)
    a.mkdir()
    (a / "keys").symlink_to(b / "Keys")
    (a / "elsewhere").symlink_to(tmp_path, target_is_directory=True)  # (outside both: said)
    (tmp_path / "other").mkdir()
    (a / "other").symlink_to(tmp_path / "other")
    for folder in (a, b):
        index.add_watch(str(folder))
    w = _watcher(index)
    schedule = w._schedule

    def slowly(root: str) -> Any:  # (a library of thousands of folders takes inotify a while)
        if root == str(b):
            time.sleep(0.5)
        return schedule(root)

    monkeypatch.setattr(w, "_schedule", slowly)
    w.start()
    try:
        wait_for(lambda: w.scans_running == 0)
        said = [r.message for r in caplog.records if "not followed" in r.message]
        other = tmp_path / "other"
        assert said == [f"{a / 'other'} links to {other}, not followed: vibrary watch add {other} indexes it"], said
    finally:
        w.stop()


def test_a_flush_waiting_for_another_programs_lock_on_the_index_holds_up_no_status(
    index: Index, tmp_path: Path
) -> None:
    """The flush waits for the index (up to a minute) holding the watcher's lock, and every status read the
    watcher's folders under that lock: `vibrary status` waited 30 s and failed, while a sqlite3 shell held
    the index."""
    import threading

    w, lib = _started(index, tmp_path)
    blocker = sqlite3.connect(index.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another program (a sqlite3 shell) holds the index
        (lib / "new.wav").write_bytes(b"x")
        time.sleep(1.0)  # (its flush waits for the lock by now)
        reads = (lambda: w.unnamed, lambda: w.over_limit, lambda: w.unfollowed_links, lambda: w.unlisted)
        answered = threading.Thread(target=lambda: [read() for read in reads])
        answered.start()
        answered.join(timeout=10)
        assert not answered.is_alive()  # a status is answered meanwhile
        blocker.execute("COMMIT")
        wait_for(lambda: _pending(index) == {str(lib / "new.wav")})  # and the event is written once it can be
    finally:
        blocker.close()
        w.stop()
