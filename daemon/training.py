"""Train on a dataset, install the model as a new version and activate it: one path for the CLI and the
daemon's Train RPC, so they cannot drift apart.

The trainer is this machine's own (started in this process for the one job: importing `vibrary.trainer`
pulls in PyTorch, which nothing else here needs), a `vibrary trainer serve` at HOST:PORT, or the cloud
(`cloud.py`, imported only when asked for). Only spectrogram shards and labels leave the dataset's folder.
Progress goes to a callback as `TrainProgress` (the fields of the API's message of that name); the last
call says succeeded, failed or cancelled, whatever happened.

A started job outlives the daemon: the daemon records it (`JobRecord`), a daemon that stops leaves it
to its trainer instead of cancelling it, and the next start collects and installs its model (`resume`).
A reboot must not throw away hours of training: a remote trainer or a cloud instance trains on, and the
daemon's own trainer is suspended with it and goes on from its last finished epoch when the daemon
starts again (trainer/checkpoint.py); so does one cut off by a crash.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import math
import secrets
import shlex
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
from vibrary.clients.client import DaemonError
from vibrary.clients.trainer_client import TrainerClient
from vibrary.proto import trainer_pb2
from vibrary.trainer.options import LOST_TRAINER, TrainConfig
from vibrary.trainer.options import parse as options_parse

from . import atomic, config, dataset, pidlock, registry
from .index import Index, ModelRow
from .infer import ModelError
from .rpc import check_token
from .shards import Manifest, too_few

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")
PHASES_KEPT = 16  # states a slow follower of a training can catch up on
EARLIER_UPLOAD = "already, from an earlier upload"  # what a training whose trainer had its shards says as it starts
STATES = ("uploading", "waiting", "training", "installing", *FINISHED)
# How long `vibrary train` calls a trainer that stopped answering mid-job before it gives up: a dropped
# Wi-Fi or VPN must not throw away hours of training that go on at the other end. The daemon never gives
# up on its own: its job record outlives it, so it calls again (at most RECALL_MAX_S apart) until the
# trainer answers or the user cancels, and a trainer that comes back after hours still has its model
# collected and installed.
RECONNECT_S = 120.0
RECALL_MAX_S = 30.0
PROGRESS_FIELDS = ("epoch", "epochs", "loss", "val_accuracy", "eta_s", "resumed_from_epoch")  # a Job's and a Progress's


def progress_fields(source: Any) -> dict[str, Any]:
    """The training progress of a trainer Job or Progress, as keyword arguments for a report."""
    return {name: getattr(source, name) for name in PROGRESS_FIELDS}


class TrainingError(RuntimeError):
    """Training could not run or did not succeed; str() says why."""


class Cancelled(TrainingError):
    pass


class KeptOnRecord(TrainingError):
    """A cloud job that could not be followed for want of valid AWS credentials (an SSO session run out): it
    ends for now, as failed, and its JobRecord stays for the next start, which collects it once they are
    renewed. Failed and forgotten, the instance trained on unpaid for and its model was never collected."""


KEEP_UNFOLLOWED_S = 2 * 86400.0  # how long after its launch such a job stays on record (its instance ends long before)


class Detached(TrainingError):
    """The daemon stopped following a job that goes on (or, on its own trainer, is suspended to go on);
    its JobRecord stays for the next start."""


@dataclass
class TrainProgress:
    state: str = "waiting"  # uploading | waiting | training | installing | succeeded | failed | cancelled
    dataset: str = ""
    model: str = ""  # NAME@VERSION once installed
    uploaded_bytes: int = 0
    upload_bytes: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float = 0.0
    val_accuracy: float = 0.0
    eta_s: float = 0.0
    resumed_from_epoch: int = 0  # a run of the same training cut off after this epoch, gone on from; 0: none
    other_options_cut_off: bool = False  # a cut-off run of the dataset with other options is kept; this starts anew
    error: str = ""
    message: str = ""
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    accuracy_of: str = ""
    plots: list[str] = field(default_factory=list)


# the trainer's "queued", which alone said nothing for the minutes it lasted
QUEUED = "queued: the trainer runs one training at a time, and starts this one once those before it end"
HELD_OUT = "held-out clips"
FOLDS_HELD_OUT = "clips held out in turn ({} folds of the training clips)"  # a small dataset of known tags
# ... of new tags: each fold scored by a head fitted on the base model's embedding of the others, in seconds, where
# the model itself trains over epochs (five trainings more would take minutes); it said the training clips' 1.0
FOLDS_STAND_IN = (
    "clips held out in turn ({} folds of the training clips, each scored by a quick fit on the base model's"
    " embedding of the others, standing in for this training: the dataset's figure, alike for any epochs or seed)"
)
OWN_CLIPS = "training clips (none held out)"  # a small dataset trains on every clip


@dataclass
class Trained:
    row: ModelRow
    val_accuracy: float  # on `accuracy_of`
    accuracy_of: str
    seconds: float
    plots: list[str]
    summary: dict[str, Any]
    again: bool = False  # the very file of a version installed before (a training as before): activated, not new


@dataclass
class JobRecord:
    """The daemon's training on record: what a restarted daemon needs to collect the job (once `job_id`
    is known), or to say that a training was cut off before a trainer had it."""

    dataset: str
    name: str  # the model's name
    trainer: str  # local, HOST:PORT or cloud
    token: str = ""
    job_id: str = ""  # empty until the trainer has started the job
    classes: list[str] = field(default_factory=list)
    upload_bytes: int = 0
    instance: str = ""  # cloud: the EC2 instance that trains
    uploading: bool = False  # cloud: an instance launched, the upload not done (a restart ends that job)
    launched_at: float = 0.0  # cloud: when the instance was launched (AWS may not know it for a while)

    def save(self, path: Path) -> None:
        """Atomically, readable by the owner only: the record holds the trainer's token."""
        record = asdict(self)
        for name in ("uploading", "launched_at"):  # left out when unset: an older version reads the record
            if not record[name]:
                del record[name]
        atomic.write(path, json.dumps(record), mode=0o600)

    @classmethod
    def load(cls, path: Path) -> JobRecord | None:
        """The record at `path`; None when there is none or it cannot be read (said in the log)."""
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring the unreadable training record %s: %s", path, e)
            return None


BASES = ("demo", "none")


def check_local_trainer() -> None:
    """TrainingError when this installation cannot train locally (the trainer extra not installed): said
    before anything starts (the Train RPC's stream went WAITING, then FAILED, with status OK)."""
    try:
        importlib.import_module("vibrary.trainer.service")
    except ImportError as e:
        raise TrainingError(
            f"the local trainer needs PyTorch ({e.name} is missing): in Vibrary's clone, pip install -e '.[trainer]', "
            "or name a remote trainer (HOST:PORT)"
        ) from None


def check_request(
    trainer: str, base: str, name: str, options: str | dict[str, Any], token: str = ""
) -> tuple[str, str, str]:
    """(trainer, base, options JSON) with the defaults filled in; ValueError for anything a trainer would
    refuse or an install would fail on, so that no trainer is started and no minute trained for nothing."""
    trainer = trainer or "local"
    if trainer not in ("local", "cloud"):
        host, _, port = trainer.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):  # not `host:²`
            raise ValueError(f"trainer {trainer!r}: expected local, cloud or HOST:PORT")
        if "://" in host or "/" in host:  # (https://host:7878 went to gRPC's resolver: "Misformatted domain name")
            raise ValueError(f"trainer {trainer!r}: HOST:PORT alone, no scheme or path (TLS: VIBRARY_TRAINER_CA)")
    base = base or "demo"
    if base not in BASES:
        raise ValueError(f"base {base!r}: expected demo (transfer from the built-in model) or none")
    if name:
        dataset.check_name(name, "model")
    check_token(token)
    return trainer, base, options_json(base, options)


# With a base: a pretrained body converges in a few epochs, and SpecAugment's silent stripes, which read as
# tremolo or gating, bring nothing to it (docs/figure3.md: 2 points lost on effects at 10 clips per class).
TRANSFER_DEFAULTS: dict[str, Any] = {"epochs": 20, "patience": 5, "masks": False}


def options_json(base: str, options: str | dict[str, Any] = "{}") -> str:
    """The user's training options over the defaults (TRANSFER_DEFAULTS when training from a base), checked
    as the trainer will check them: a typo or a bad value is said now, not after a trainer started."""
    given = options_parse(options) if isinstance(options, str) else dict(options)
    defaults: dict[str, Any] = dict(TRANSFER_DEFAULTS) if base != "none" else {}
    merged = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    TrainConfig.from_dict(merged)
    return json.dumps(merged)


class _Report:
    """A job's progress so far: each call changes some fields and hands the listener a copy."""

    def __init__(self, dataset_name: str, listener: Callable[[TrainProgress], None]) -> None:
        self.state = TrainProgress(dataset=dataset_name)
        self.started = time.monotonic()
        self._listener = listener

    def __call__(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.seconds = time.monotonic() - self.started
        self._listener(copy.deepcopy(self.state))


def train(
    home_dir: Path,
    dataset_name: str,
    *,
    index: Index,
    name: str = "",
    trainer: str = "local",
    base: str = "demo",
    options: str | dict[str, Any] = "{}",
    token: str = "",
    confirm: Callable[[str], bool] = lambda text: False,
    progress: Callable[[TrainProgress], None] = lambda p: None,
    cancel: threading.Event | None = None,
    leave: threading.Event | None = None,
    on_started: Callable[[JobRecord], None] = lambda job: None,
) -> Trained:
    """Dataset → trainer → new model version installed, activated (the same name's other versions are
    deactivated by `Index.set_active`), its plots beside it. TrainingError (Cancelled) when it fails.

    `on_started` hears of the job once a trainer has it; `leave` then stops following it without
    cancelling it (Detached), for `resume` to collect later."""
    cancel = cancel or threading.Event()
    report = _Report(dataset_name, progress)

    def work() -> Trained:
        checked_trainer, checked_base, opts = check_request(trainer, base, name, options, token)
        with dataset.reading(home_dir, dataset_name):
            return read(checked_trainer, checked_base, opts)

    def read(checked_trainer: str, checked_base: str, opts: str) -> Trained:
        manifest, shard_dir = dataset.load(home_dir, dataset_name)
        manifest.check_classes()  # (a dataset made before the rules: said before any upload, as the trainer would)
        with contextlib.suppress(FileNotFoundError):  # a dataset from before labels were kept: the trainer says
            if why := too_few(dataset.load_report(home_dir, dataset_name).per_class):
                raise TrainingError(f"dataset {dataset_name!r} cannot train: {why}")  # before any upload
        model_name = name or dataset_name
        try:
            registry.check_free_name(index, model_name)  # before any upload
        except ModelError as e:
            raise ValueError(f"{e} (`vibrary train DATASET --name NAME`)") from None
        classes = list(manifest.classes)
        report(classes=classes, upload_bytes=manifest.size)
        job = JobRecord(dataset_name, model_name, checked_trainer, token, classes=classes, upload_bytes=manifest.size)
        if checked_trainer == "cloud":
            files = _in_cloud(job, manifest, shard_dir, checked_base, opts, confirm, report, cancel, leave, on_started)
        else:
            files = _on_trainer(
                home_dir, job, manifest, shard_dir, checked_base, opts, report, cancel, leave, on_started
            )
        return _installed(index, home_dir, files, model_name, report, cancel)

    return _reported(report, work)


def resume(
    home_dir: Path,
    job: JobRecord,
    *,
    index: Index,
    progress: Callable[[TrainProgress], None] = lambda p: None,
    cancel: threading.Event | None = None,
    leave: threading.Event | None = None,
    on_started: Callable[[JobRecord], None] = lambda job: None,
) -> Trained:
    """Follow a job that a trainer started for an earlier run of the daemon (the daemon's own trainer
    takes it up again from its last epoch), and install its model as `train` would have: the same
    progress, the same endings."""
    cancel = cancel or threading.Event()
    report = _Report(job.dataset, progress)

    def work() -> Trained:
        trainer = "its own trainer" if job.trainer == "local" else job.trainer
        if not job.job_id:  # cut off before any trainer had the job
            raise TrainingError(f"the daemon stopped before {trainer} had the job: start the training again")
        if job.trainer == "local":
            trainer += ", from its last finished epoch"
        report(
            classes=list(job.classes),
            upload_bytes=job.upload_bytes,
            uploaded_bytes=job.upload_bytes,
            message=f"following job {job.job_id} on {trainer}, started before the daemon restarted",
        )
        on_started(job)
        if leave is not None and leave.is_set():  # stopped as it starts: do not start a trainer only to stop it
            raise Detached(f"left job {job.job_id} to the next start")
        if job.trainer == "cloud" and job.uploading:
            try:
                _cloud().abandon(job.job_id, job.instance, job.launched_at)
            except Exception as e:  # AWS out of reach (the network not up yet): the record must stay, or the
                log.warning("could not end cloud %s yet: %s", _instance(job), e)  # instance runs on unsaid
                raise Detached(f"{_instance(job)} could not be ended yet ({e}); tried at the next start") from e
            raise TrainingError(
                f"the daemon stopped during the upload to the cloud: {_instance(job)} was terminated before it"
                " trained; start the training again (the shards uploaded are kept)"
            )
        if job.trainer == "cloud":
            files = _from_cloud(job, report, cancel, leave)
        else:
            with _trainer_at(home_dir, job, report, cancel, leave, job.job_id) as client:
                files = _collect(client, job.job_id, report, cancel, leave)
        return _installed(index, home_dir, files, job.name, report, cancel)

    return _reported(report, work)


def _reported(report: _Report, work: Callable[[], Trained]) -> Trained:
    """`work()`, and its ending reported whatever it is: the last progress always says how a job ended."""
    try:
        return work()
    except Detached:
        raise  # the job goes on; nothing has ended
    except Cancelled as e:
        report(state="cancelled", error=str(e), message="training cancelled")
        raise
    except KeptOnRecord as e:  # over for now, as failed, but on record (the caller keeps it)
        report(state="failed", error=str(e), message="training failed")
        raise
    except Exception as e:  # bad input, the trainer's refusals, broken transfers: all end the job the same way
        report(state="failed", error=str(e), message="training failed")
        raise TrainingError(str(e)) from e


# of the user's clips right after a fit from known rows, below which the names may mean other sounds: the
# figure's effect clips, the demo's sounds, are 84-91 % right (docs/figure3.md, "Stop 29"), its instrument clips
# 96-97 %; tones named as effects 62 % (measured on effects: one bar for both families)
KNOWN_FITS = 0.7


def known_said(summary: dict[str, Any], tags: Sequence[str]) -> str:
    """What a training of tags the base already knows did (trainer/known.py), or "": no epochs ran."""
    if not (known := summary.get("known")):
        return ""
    said = f"the base model already knows these tags ({', '.join(known)}): your clips adjusted what it knows"
    if new := [t for t in tags if t not in known]:
        said += f", and taught it {', '.join(new)} beside them,"
    said += " in one fit"
    # (the bar was set on the training clips' accuracy: a small dataset's folds held out in turn read lower)
    held_out = "val_accuracy" in summary and not summary.get("folds")
    right = summary.get("val_accuracy" if held_out else "train_accuracy", summary.get("val_accuracy", 1.0))
    if right < KNOWN_FITS:  # held to the demo's idea of them: the user may mean other sounds by these names
        clips = "the clips held out to check it" if held_out else "your clips it was fitted on"
        return (
            f"{said}, and it is right on only {right:.0%} of {clips}: you may mean other sounds by these names; "
            f"{AS_NEW_SAID}"
        )
    return f"{said}, no epochs needed ({AS_NEW_SAID})"


# (a front end's user reads this too: the CLI's flag alone meant nothing to one)
AS_NEW_SAID = '`vibrary train --as-new` (over the API, the option {"known_pull": 0}) trains them as new tags'


def _installed(
    index: Index, home_dir: Path, files: dict[str, bytes], name: str, report: _Report, cancel: threading.Event
) -> Trained:
    """Install the trainer's files as a new active version, its plots beside it. A cancel heard while they
    came keeps them uninstalled (it was answered "cancelling", and the model was installed and activated);
    once installing, a cancel is refused (daemon/server.py)."""
    summary = json.loads(files.pop("summary.json", b"{}") or b"{}")
    report(state="installing", message="installing the model")  # first: a cancel from now on is refused
    if cancel.is_set():
        raise Cancelled(f"training cancelled as its model came; {_kept(home_dir, files, name)}")
    began = time.time()
    try:  # a full disk, a locked index, Ctrl-C: the trainer's copy may be gone (the cloud's is)
        row = _install(index, home_dir, files, name)
    except (TrainingError, OSError, sqlite3.Error) as e:
        raise TrainingError(f"{e}; {_kept(home_dir, files, name)}") from None
    except BaseException:
        log.warning("installing %s was interrupted; %s", name, _kept(home_dir, files, name))
        raise
    plots = []
    for plot in registry.PLOTS:
        if plot in files:
            target = Path(row.path).with_suffix(f".{plot}")
            try:
                target.write_bytes(files[plot])
            except OSError as e:  # the model is installed and tags already: a job "failed" for a plot was false
                log.warning("could not write %s (%s); the model is installed all the same", target, e)
                continue
            plots.append(str(target))
    accuracy, accuracy_of = measured(summary, report.state.val_accuracy)
    fitted = known_said(summary, row.classes)
    again = row.installed < began  # (said as an install, it read as a new version: README's "every model is one")
    said = installed_said(row, again) + (f"; {fitted}" if fitted else "")
    report(state="succeeded", model=row.ref, val_accuracy=accuracy, accuracy_of=accuracy_of, plots=plots, message=said)
    return Trained(row, accuracy, accuracy_of, time.monotonic() - report.started, plots, summary, again)


def measured(summary: dict[str, Any], default: float = math.nan) -> tuple[float, str]:
    """A training's accuracy, and what it was measured on, from its summary (trainer/train.py TrainResult.summary):
    with no clip held out there is no validation accuracy (the API said 0.0), but the training clips' or folds'."""
    folds = summary.get("folds") or summary.get("folds_stand_in")
    held_out = summary.get("val_clips") != 0 or bool(folds)
    accuracy = float(summary.get("val_accuracy" if held_out else "train_accuracy", default))
    in_turn = FOLDS_STAND_IN if summary.get("folds_stand_in") else FOLDS_HELD_OUT
    return accuracy, in_turn.format(folds) if folds else HELD_OUT if held_out else OWN_CLIPS


def installed_said(row: ModelRow, again: bool) -> str:
    """What became of a trained model: a new version, or one installed before that this training made again."""
    if again:
        return f"activated {row.ref}, installed before: this training made the very same model"
    return f"installed and activated {row.ref}"


def _kept(home_dir: Path, files: dict[str, bytes], name: str) -> str:
    """Keep a trained model that could not be installed where the user can install it by hand, and say so."""
    if "model.onnx" not in files:
        return "nothing was trained to keep"
    folder = home_dir / "uninstalled" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("model.onnx", *registry.PLOTS):  # by name: a trainer's names are its own
            if file in files:
                atomic.write(folder / file, files[file])
    except OSError as e:
        return f"and the model could not be kept either ({e})"
    command = shlex.join(["vibrary", "models", "install", str(folder / "model.onnx"), "--name", name])
    return f"the model is kept: `{command}` installs it"  # (pasted: macOS's home has a space)


def _install(index: Index, home_dir: Path, files: dict[str, bytes], name: str) -> ModelRow:
    if "model.onnx" not in files:
        raise TrainingError("the trainer sent no model")
    staging = config.models_dir(home_dir) / f".incoming-{uuid.uuid4().hex[:12]}.onnx"
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(files["model.onnx"])
    try:
        return registry.install(index, home_dir, str(staging), name, active=True)
    except ModelError as e:
        raise TrainingError(f"the trained model cannot be installed: {e}") from None
    finally:
        staging.unlink(missing_ok=True)


@contextlib.contextmanager
def _trainer_at(
    home_dir: Path,
    job: JobRecord,
    report: Callable[..., None],
    cancel: threading.Event,
    leave: threading.Event | None,
    resume: str = "",
) -> Iterator[TrainerClient]:
    """A client of the job's trainer: HOST:PORT with the job's token, or "local", the daemon's own trainer,
    started in this process for as long as the job is followed (and its job suspended on the way out, to go
    on later), with a token of this run's: open on loopback, any other account on the machine could list,
    download and cancel the user's jobs. The local trainer takes up again only the job `resume` names;
    another it was cut off in is failed, unless the daemon comes back for it (its training record names it).
    While another process trains in the same folder (the daemon, or a `vibrary train`), this waits for it to
    finish."""
    if job.trainer != "local":
        with TrainerClient(job.trainer, job.token) as client:
            yield client
        return
    check_local_trainer()
    from vibrary.trainer.service import TrainerBusy, serve

    said, token = "", secrets.token_urlsafe(32)
    while True:
        recorded = JobRecord.load(config.training_path(home_dir))  # read anew: the daemon may have ended
        spare = [recorded.job_id] if recorded is not None and recorded.trainer == "local" else []
        try:
            resumed = [resume] if resume else []
            serving = serve(home_dir / "trainer", "127.0.0.1:0", token, resume=resumed, spare=spare, own=True)
            break
        except TrainerBusy as e:
            why = str(e)
            # ("in use by another trainer (pid 17456)": the daemon; None == None is no daemon)
            if e.pid is not None and e.pid == pidlock.holder(config.lock_path(home_dir)):
                why = "the daemon is training (`vibrary status` says what; `vibrary train --cancel` stops it)"
            if why != said:
                said = why
                report(state="waiting", message=f"{why}: waiting for its training to finish")
        if cancel.wait(1.0):
            raise Cancelled("training cancelled while waiting for the trainer")
        if leave is not None and leave.is_set():
            raise Detached("left while waiting for the trainer")
    try:
        called = f"the trainer on this machine (in {home_dir / 'trainer'})"
        with TrainerClient(f"127.0.0.1:{serving.port}", token, called=called) as client:
            yield client
    finally:
        serving.stop(grace=1)  # exiting while gRPC shuts down aborts the process


def _on_trainer(
    home_dir: Path,
    job: JobRecord,
    manifest: Manifest,
    shard_dir: Path,
    base: str,
    options: str,
    report: _Report,
    cancel: threading.Event,
    leave: threading.Event | None,
    on_started: Callable[[JobRecord], None],
) -> dict[str, bytes]:
    """Upload, start and collect `job` (its job_id still empty) on a remote trainer or this process's own."""
    sent = 0

    def uploaded(n: int) -> None:
        nonlocal sent
        if cancel.is_set():
            raise Cancelled("training cancelled during the upload")
        sent += n
        report(uploaded_bytes=sent)

    with _trainer_at(home_dir, job, report, cancel, leave) as client:
        report(state="uploading", message=f"uploading {manifest.size:,} bytes of spectrograms to {client.target}")
        try:
            client.upload(manifest, shard_dir, uploaded)
        except Exception:
            if cancel.is_set():
                raise Cancelled("training cancelled during the upload") from None
            raise
        # (the bar and the log said "upload N of N bytes" where none was sent: the trainer had them)
        had = "the spectrograms" if not sent else f"{manifest.size - sent:,} of their {manifest.size:,} bytes"
        said = f" (it had {had} {EARLIER_UPLOAD})" if sent < manifest.size else ""
        report(state="waiting", uploaded_bytes=manifest.size, message=f"starting the job on the trainer{said}")
        job.job_id = client.start(manifest, job.name, base, options, followed=leave is None).id  # none come back
        on_started(job)
        try:
            return _collect(client, job.job_id, report, cancel, leave)
        except BaseException:  # Ctrl-C on `vibrary train` included: with no `leave`, nobody comes back for it
            if leave is None:
                try:
                    if others := client.cancel(job.job_id).followers:  # the same training, started elsewhere
                        report(message=f"{LEFT_TO_OTHERS}: {others} more")
                except Exception as e:  # a Ctrl-C said "its job on the trainer is cancelled" of every failure
                    code = e.code if isinstance(e, DaemonError) else None
                    if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):  # (over)
                        reached = code is not None and code not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        )
                        report(message=f"{CANCEL_UNSENT}: job {job.job_id} ({'refused: ' if reached else ''}{e})")
            raise


# The trainer was not reached to cancel a job its caller gave up: it cancels one nobody follows, after a while
CANCEL_UNSENT = "the trainer could not be told to cancel"
# … or it was, and other callers follow the job (the same training started elsewhere): it goes on for them
LEFT_TO_OTHERS = "the job goes on on the trainer for the other callers that follow it"


def _collect(
    client: TrainerClient,
    job_id: str,
    report: _Report,
    cancel: threading.Event,
    leave: threading.Event | None,
) -> dict[str, bytes]:
    """The files of a job once it has succeeded; TrainingError (Cancelled, Detached) when it does not."""
    job = _follow(client, job_id, report, cancel, leave)
    if leave is not None and leave.is_set():  # the daemon is stopping: the next start downloads and installs
        raise Detached(f"left job {job_id} to the trainer")
    if job is None:
        raise TrainingError("the trainer ended the job without a word")
    if job.state == trainer_pb2.Job.CANCELLED and not cancel.is_set() and job.error:  # not by us: why, said
        why = job.error.removeprefix("cancelled: ")  # (its own words may start so: "cancelled: cancelled: nobody…")
        raise Cancelled(f"training cancelled by the trainer: {why}")  # (a token removed read as a Ctrl-C)
    if job.state == trainer_pb2.Job.CANCELLED and not cancel.is_set():  # a caller that followed the same job
        raise Cancelled(  # (the same dataset trained under the same token elsewhere): it read as a Ctrl-C here
            "training cancelled on the trainer, not by this command (by another that followed the same job: the same"
            " dataset, name and options, with the same token); the same command goes on from its last finished epoch"
        )
    if job.state == trainer_pb2.Job.CANCELLED or cancel.is_set():
        raise Cancelled("training cancelled")
    if job.state != trainer_pb2.Job.SUCCEEDED:
        raise TrainingError(f"training failed: {job.error or 'no reason given'}")
    files = client.download(job_id)
    files["summary.json"] = (job.summary or "{}").encode()
    return files


def _follow(
    client: TrainerClient,
    job_id: str,
    report: _Report,
    cancel: threading.Event,
    leave: threading.Event | None = None,
) -> trainer_pb2.Job | None:
    """Report the job's progress until it ends, and cancel it on the trainer when `cancel` is set (the
    watch stream only says so; a thread asks the trainer). The thread is done before the client closes, so
    it never calls a closed channel, and a trainer that cannot be reached to cancel is left to watch().
    When `leave` is set the thread closes the client instead, which ends the watch (the caller sees
    `leave` and raises Detached)."""
    done = threading.Event()

    def stop_when_cancelled() -> None:
        while not done.wait(0.2):
            if cancel.is_set():  # (the daemon's job, which it alone follows: JobRef.follower does not apply)
                with contextlib.suppress(DaemonError):  # gone, or the job already over: watch() tells how it ended
                    client.cancel(job_id)
                return
            if leave is not None and leave.is_set():
                client.close()
                return

    stopper = threading.Thread(target=stop_when_cancelled, name="train-cancel", daemon=True)
    stopper.start()
    job = None
    # since when the trainer is out of reach (None: it answered since). Not since its last message: a job
    # queued behind another, or a CPU epoch of minutes, says nothing for long, and the first dropped
    # connection after such a quiet spell counted it all, and gave up at once
    lost_at: float | None = None
    try:
        while True:
            try:
                for job in client.watch(job_id):  # a new watch starts with the job as it is now
                    lost_at = None
                    report(**_forward(job, report.state))
                return job
            except Exception as e:
                if leave is not None and leave.is_set():
                    return job
                if isinstance(e, DaemonError) and e.code == grpc.StatusCode.NOT_FOUND:  # it said only "no job 'x'"
                    raise TrainingError(
                        f"the trainer no longer has job {job_id} (a job is removed a month after it ended"
                        " uncollected, or with the trainer's data): start the training again, `vibrary train"
                        f" {report.state.dataset}`"
                    ) from e
                lost = isinstance(e, DaemonError) and e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
                if not lost:
                    raise
                lost_at = time.monotonic() if lost_at is None else lost_at
                silent = time.monotonic() - lost_at
                if leave is None and silent > RECONNECT_S:
                    raise TrainingError(
                        f"the trainer has been out of reach for {silent:.0f} s ({e}); this command no longer follows "
                        f"job {job_id}, and the trainer cancels a job nobody follows: once it is back, the same "
                        "command goes on from the job's last finished epoch"
                    ) from e
                if cancel.wait(min(RECALL_MAX_S, 1.0 + silent / 10)):
                    with contextlib.suppress(DaemonError, ValueError):  # back meanwhile? (ValueError: closed)
                        client.cancel(job_id)
                        raise Cancelled("training cancelled") from None
                    # a daemon's job is not cancelled by the trainer when nobody follows it (the daemon comes back
                    # for it): said, for the user to know that a shared trainer's time goes on it
                    there = "the trainer cancels it once nobody follows it" if leave is None else "it trains on there"
                    raise Cancelled(
                        f"training cancelled while the trainer was out of reach: job {job_id} could not be told;"
                        f" {there}"
                    ) from None
                since = f"for {silent:.0f} s" if silent >= 1 else "just now"
                lost_it = f"{LOST_TRAINER} {since} ({e}); reconnecting to job {job_id}"
                report(message=lost_it, **({} if report.state.state == "training" else {"state": "waiting"}))
    finally:
        done.set()
        stopper.join()


def _forward(job: Any, now: TrainProgress) -> dict[str, Any]:
    """A trainer Job's news as a report that only moves forward: its queue is waiting and its run training,
    but a run's export (epoch 0 of 0) keeps the epochs trained, and its end (done, cancelled) is train()'s
    to say once the model is installed. A front end's bar went back to 0, and a finished training read
    "waiting", then "installing"."""
    if job.state in (trainer_pb2.Job.SUCCEEDED, trainer_pb2.Job.FAILED, trainer_pb2.Job.CANCELLED):
        return {}
    running = job.state == trainer_pb2.Job.RUNNING
    changes: dict[str, Any] = {"message": QUEUED if job.state == trainer_pb2.Job.QUEUED else job.phase}
    if running or now.state != "training":  # a job queued again after a restart of the trainer stays training
        # (and so does one whose trainer was out of reach meanwhile: _follow keeps the state then)
        changes["state"] = "training" if running else "waiting"
    if job.epochs:
        changes.update(progress_fields(job))
    if job.other_options_cut_off:
        changes["other_options_cut_off"] = True
    return changes


def _cloud() -> Any:
    """The cloud module, or a TrainingError that says what to install."""
    try:
        return importlib.import_module(f"{__package__}.cloud")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.cloud":
            raise TrainingError("cloud training is not part of this installation of Vibrary") from None
        raise TrainingError(f"cloud training needs {e.name}: in Vibrary's clone, pip install -e '.[cloud]'") from None


def check_cloud(home_dir: Path) -> None:
    """TrainingError, before anything is uploaded, when cloud training cannot start: not installed, or its
    settings (bucket, image, instance profile) missing or wrong."""
    cloud = _cloud()
    try:
        cloud.CloudSettings.load(home_dir)
    except cloud.CloudError as e:
        raise TrainingError(str(e)) from None


def _cloud_progress(
    cloud: Any, report: Callable[..., None], cancel: threading.Event, leave: threading.Event | None
) -> Callable[[dict[str, Any]], None]:
    """The cloud job's progress as reports; raising here cancels the job, or (cloud.Left) leaves it."""
    known = {f.name for f in fields(TrainProgress)}

    def cloud_progress(update: dict[str, Any]) -> None:
        if cancel.is_set():
            raise Cancelled("training cancelled")
        if leave is not None and leave.is_set():
            raise cloud.Left()
        changes = {k: v for k, v in update.items() if k in known}
        if "state" in changes:  # the cloud speaks the proto's enum names
            changes["state"] = str(changes["state"]).lower()
            if changes["state"] in FINISHED or changes["state"] not in STATES:
                changes.pop("state")  # how a job ends is train()'s to say, once the model is installed
        report(**changes)

    return cloud_progress


def _in_cloud(
    job: JobRecord,
    manifest: Manifest,
    shard_dir: Path,
    base: str,
    options: str,
    confirm: Callable[[str], bool],
    report: Callable[..., None],
    cancel: threading.Event,
    leave: threading.Event | None,
    on_started: Callable[[JobRecord], None],
) -> dict[str, bytes]:
    cloud = _cloud()
    asked: list[str] = []

    def ask(estimate: str) -> bool:
        asked.append(estimate)
        report(message=estimate)  # a front end following the job sees what was asked, and the cost
        return confirm(estimate)

    def started(job_id: str, instance: str) -> None:
        job.job_id, job.instance, job.uploading = job_id, instance, False
        on_started(job)

    def launched(job_id: str, instance: str) -> None:  # on record at once: a daemon killed mid-upload
        job.job_id, job.instance, job.uploading = job_id, instance, True  # left it running, unsaid
        job.launched_at = time.time()
        on_started(job)

    try:
        with _followed(cloud, job, on_record=leave is not None):
            return dict(
                cloud.train_in_cloud(
                    manifest,
                    shard_dir,
                    name=job.name,
                    base=base,
                    options=options,
                    confirm=ask,
                    progress=_cloud_progress(cloud, report, cancel, leave),
                    on_started=started,
                    on_launched=launched,
                )
            )
    except cloud.CostDeclined as e:  # the caller must see the estimate to say yes next time (confirm_cost)
        raise Cancelled("\n".join([str(e), *asked])) from None


def _from_cloud(
    job: JobRecord, report: Callable[..., None], cancel: threading.Event, leave: threading.Event | None
) -> dict[str, bytes]:
    cloud = _cloud()
    with _followed(cloud, job):
        progress = _cloud_progress(cloud, report, cancel, leave)
        return dict(cloud.collect(job.job_id, job.instance, progress, job.launched_at))


@contextlib.contextmanager
def _followed(cloud: Any, job: JobRecord, on_record: bool = True) -> Iterator[None]:
    """How following a cloud job ends short: left to train (the daemon stopping: Detached); or refused by AWS,
    kept on record when for want of credentials (and launched lately) for the next start to collect
    (KeptOnRecord), else failed as any job. `on_record`: the caller keeps the job's record (the daemon); a
    `vibrary train` in a terminal keeps none, and says what is left running where."""
    try:
        yield
    except cloud.Left:
        raise Detached(f"left cloud job {job.job_id} to {_instance(job)}") from None
    except cloud.AwsRefused as e:
        recent = job.launched_at and time.time() - job.launched_at < KEEP_UNFOLLOWED_S
        if not (cloud.credentials_gone(e) and job.job_id):
            raise
        left = (  # (nothing could be ended without credentials, and nobody will come back for it)
            f" it trains on, uncollected, until it ends itself (its training done, or its max_hours); once the AWS"
            f" credentials are renewed, see that {_instance(job)} is terminated in the EC2 console and delete"
            f" jobs/{job.job_id}/ in the bucket"
        )
        if not on_record:  # `vibrary train` in a terminal: it was said to be collected at a daemon's start
            raise TrainingError(f"could not follow cloud job {job.job_id} ({e}):{left}") from e
        if not recent:  # (dropped from the record, which said nothing of what was left)
            when = "launched long ago" if job.launched_at else "its launch time not on record (an older version's)"
            raise TrainingError(
                f"could not collect cloud job {job.job_id} ({e}), {when}: its instance has ended itself by now"
                f" (its max_hours), its model never collected; once the AWS credentials are renewed, see that"
                f" {_instance(job)} is gone in the EC2 console and delete jobs/{job.job_id}/ in the bucket"
            ) from e
        raise KeptOnRecord(
            f"could not follow cloud job {job.job_id} on {_instance(job)} ({e}): it trains on; renew the"
            " AWS credentials and restart the daemon to collect it (the instance ends itself after its max_hours)"
        ) from e


def _instance(job: JobRecord) -> str:
    """The job's instance, in words: one on record from before its launch has no id yet (daemon/cloud.py)."""
    return f"instance {job.instance}" if job.instance else "the instance launched for it, if any,"


class Background:
    """One training run in its own thread, so that a caller who goes away does not stop it; any number of
    callers can follow its progress. `run(job)` reports through `job.update` and honours `job.cancel` and
    `job.leave`; it sets `job.started` once a trainer has the job (and can be left to it)."""

    def __init__(
        self,
        dataset_name: str,
        run: Callable[[Background], object],
        listener: Callable[[TrainProgress], None] = lambda p: None,
    ) -> None:
        self.cancel = threading.Event()
        self.leave = threading.Event()
        self.started = False
        self.progress = TrainProgress(dataset=dataset_name)
        self._changed = threading.Condition()
        self._version = 0
        self._passed = 0  # states left behind since the start
        # the last progress of each state in turn: a follower that reads slower than the states change (a
        # small upload is over in milliseconds) still sees every state, not only the newest progress
        self._phases: list[TrainProgress] = [self.progress]
        self._listener = listener
        self._thread = threading.Thread(target=self._run, args=(run,), name="training", daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[Background], object]) -> None:
        try:
            run(self)
        except TrainingError:
            pass  # train() has reported it as the last progress (or, Detached, the job goes on)
        except Exception as e:  # a bug must still end the job visibly, and leave its traceback in the log
            log.exception("training on %s failed unexpectedly", self.progress.dataset)
            self.update(TrainProgress(dataset=self.progress.dataset, state="failed", error=f"internal error: {e}"))

    def update(self, progress: TrainProgress) -> None:
        with self._changed:
            if progress.state == self.progress.state:
                self._phases[-1] = progress
            else:
                self._phases = [*self._phases[-PHASES_KEPT + 1 :], progress]
                self._passed += 1
            self.progress = progress
            self._version += 1
            self._changed.notify_all()
        self._listener(progress)

    @property
    def finished(self) -> bool:
        return self.progress.state in FINISHED

    def stop(self, timeout: float) -> None:
        """Leave a started job to its trainer (cancel one not started yet) and wait a little: a daemon that
        shuts down must not leave a half-installed model, nor its own trainer's thread under it."""
        self.leave.set()
        if not self.started:
            self.cancel.set()
        self._thread.join(timeout)

    def follow(self, active: Callable[[], bool] = lambda: True) -> Iterator[TrainProgress]:
        """Every state from now (starting with the current one) until the job ends or the caller leaves:
        within a state the newest progress, and the last progress of each state that passed meanwhile."""
        seen, last, passed = -1, None, self._passed
        while active():
            with self._changed:
                if self._version == seen:
                    self._changed.wait(0.25)
                seen = self._version
                behind = min(self._passed - passed, len(self._phases) - 1)
                news = [p for p in self._phases[-1 - behind :] if p is not last]
                passed = self._passed
            for current in news:
                yield current
                last = current
                if current.state in FINISHED:
                    return

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
