"""The commands that train your own tags: `train` (here, on a remote trainer or in the cloud, with its
progress and the cost prompt) and `trainer` (the training service: serve, its tokens, its health, a cloud job)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm
from vibrary.daemon import config, pidlock, registry
from vibrary.daemon.cloud import ENDING_SIGNALS
from vibrary.daemon.infer import ModelError
from vibrary.daemon.rpc import is_loopback
from vibrary.trainer.options import FITTING

from .client import Client
from .daemon_commands import on_signals
from .output import CommandError, Terminated, UsageError, _index, _out, changed_tags, terminal_safe
from .tray_state import many

LOST_SAID_EVERY_S = 30.0  # how often `vibrary train` says the trainer is still out of reach


def _cancel_daemons(args: argparse.Namespace) -> int:
    """The training a front end started through the daemon (its Train call): the terminal had no way to stop it,
    nor one that its trainer, out of reach, kept waiting."""
    if args.dataset:
        raise UsageError("--cancel cancels the daemon's training, whichever dataset: give no DATASET")
    with Client() as c:  # (none running: FAILED_PRECONDITION, server.NO_TRAINING, said as the error)
        t = c.cancel_training()
    obj = {"dataset": t.dataset, "action": "cancel", "message": t.message}  # ("cancelling": the stream ends so)
    _out(args, obj, f"cancelling the training of {t.dataset}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vibrary.daemon.training import (
        CANCEL_UNSENT,
        EARLIER_UPLOAD,
        HELD_OUT,
        LEFT_TO_OTHERS,
        LOST_TRAINER,
        OWN_CLIPS,
        TrainingError,
        TrainProgress,
        check_cloud,
        check_request,
        installed_said,
        train,
    )

    if args.cancel:
        return _cancel_daemons(args)
    if not args.dataset:
        raise UsageError("give the DATASET to train (`vibrary dataset list` lists them), or --cancel")
    options = {"epochs": args.epochs, "seed": args.seed, "known_pull": 0 if args.as_new else None}
    try:  # `--name "My Model"`, `--trainer lcoal`: refused as argparse refuses (exit 2), before any advice
        _, _, checked = check_request(args.trainer, args.base, args.name, options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    index, home_dir = _index()
    if args.name:  # as mistyped as any other option: a usage error, before any advice
        try:
            registry.check_free_name(index, args.name)
        except ModelError as e:
            raise UsageError(f"{e} (`--name NAME`)") from None
    if args.trainer == "cloud":  # its settings, before the advice and an upload's first line
        try:
            check_cloud(home_dir)
        except TrainingError as e:
            raise CommandError(str(e)) from None
    bars: dict[str, tqdm] = {}
    said = ""
    states: set[str] = set()  # the states seen
    refused: list[str] = []  # why the trainer refused to cancel the job, when it did
    started: list[str] = []  # the job, once a trainer has it: waiting for a busy trainer or uploading, none

    logged = {"epoch": 0, "upload": 0}  # epoch 0 of a fit from known rows says "loss 0.000" of nothing yet

    def log_lines(p: TrainProgress) -> None:
        """A line per epoch and per quarter of the upload where no bar can show (a log file, a script's
        pipe): a training of hours said nothing there until it ended."""
        # each quarter sent (the last comes as it waits): "upload 0 of N bytes" came before refusals that no
        # upload had begun for (a wrong token, no AWS credentials), and "N of N" of an upload of nothing
        uploaded = p.state == "uploading" or (p.state == "waiting" and "uploading" in states)
        if uploaded and p.upload_bytes and EARLIER_UPLOAD not in p.message:
            quarter = 4 * p.uploaded_bytes // p.upload_bytes
            if quarter > logged["upload"]:
                logged["upload"] = quarter
                print(f"upload {p.uploaded_bytes:,} of {p.upload_bytes:,} bytes", file=sys.stderr, flush=True)
        elif p.state == "training" and p.epochs and p.epoch > logged["epoch"]:
            logged["epoch"] = p.epoch
            done = "fitted the tags the base model knows" if p.message == FITTING else f"epoch {p.epoch}/{p.epochs}"
            print(f"{done}: loss {p.loss:.3f}", file=sys.stderr, flush=True)

    said_at = 0.0

    def progress(p: TrainProgress) -> None:
        nonlocal said, said_at
        if p.resumed_from_epoch and "resumed" not in states:  # the bar stood at epoch 12 of a new command
            states.add("resumed")
            logged["epoch"] = p.resumed_from_epoch  # its line was the run's before: "epoch 8/200" twice
            tqdm.write(
                f"going on after epoch {p.resumed_from_epoch} of {p.epochs}, where an earlier run of this training"
                " stopped",
                file=sys.stderr,
            )
        if p.other_options_cut_off and "anew" not in states:  # (it started at epoch 1 unsaid)
            states.add("anew")
            tqdm.write(
                "starting anew: an earlier run of this dataset was cut off with other options (it goes on where"
                " it stopped if run again with the same options)",
                file=sys.stderr,
            )
        states.add(p.state)
        if p.message.startswith(CANCEL_UNSENT) and "(refused: " in p.message:
            refused.append(p.message.partition("(refused: ")[2].removesuffix(")"))
        elif p.message.startswith(CANCEL_UNSENT):
            states.add("unsent")
        if p.message.startswith(LEFT_TO_OTHERS):
            states.add("left")
        lost = p.message.startswith(LOST_TRAINER)
        news = p.state == "waiting" or lost  # queued, or the trainer out of reach
        # out of reach, the message counts the seconds: it was a new line every second or two
        again = lost and said.startswith(LOST_TRAINER) and time.monotonic() - said_at < LOST_SAID_EVERY_S
        no_bar = not sys.stderr.isatty()
        if no_bar:  # first: the upload's last quarter comes with the news that the job starts
            log_lines(p)
        if news and p.message != said and not again:
            said, said_at = p.message, time.monotonic()
            tqdm.write(p.message, file=sys.stderr)
        if no_bar:
            return
        if p.state == "uploading":
            if "upload" not in bars:
                bars["upload"] = tqdm(
                    total=p.upload_bytes, unit="B", unit_scale=True, disable=None, file=sys.stderr, desc="upload"
                )
            bars["upload"].n = p.uploaded_bytes
            bars["upload"].refresh()
        elif p.state == "training":
            upload = bars.get("upload")
            if upload is not None and upload.n != upload.total:  # the trainer had the rest: it stood at 0 %
                upload.n = upload.total or 0
                upload.refresh()
            if "train" not in bars:  # (from the epoch it is at: a job followed again showed "732985 epoch/s")
                initial = p.epoch if p.epochs else 0
                bars["train"] = tqdm(
                    total=None, initial=initial, unit="epoch", disable=None, file=sys.stderr, desc="training"
                )
            bar = bars["train"]
            if p.message == FITTING:  # one fit of seconds: "training 1/1 epoch" of a `--epochs 30`
                bar.unit = "fit"
                bar.set_description(FITTING, refresh=False)
            if p.epochs:  # 0 while it exports: the bar stays where training ended
                bar.total, bar.n = p.epochs, p.epoch
            # a dataset too small to hold clips out has no validation: "val acc 0.00" read as a failure
            held_out = f" val acc {p.val_accuracy:.2f}" if p.val_accuracy else ""
            bar.set_postfix_str(f"loss {p.loss:.3f}{held_out}")

    def interrupted(signum: int, frame: object) -> None:
        # a closed terminal or a `kill` ends the job as Ctrl-C does (they ended the process at once, a cloud
        # instance running); a second one (a closed terminal sends two) must not cut the clean-up short
        if "succeeded" in states:  # installed and activated: what is left is to say so (it exited 130, unsaid)
            return
        for sig in ENDING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)  # (its exit status: 130, 143)

    on_signals(interrupted, *ENDING_SIGNALS)
    with contextlib.suppress(FileNotFoundError, ValueError):  # train() says what is wrong with the dataset
        from vibrary.daemon import dataset
        from vibrary.daemon.advice import advise

        # before minutes of waiting; tags the demo knows are advised as they will train, not with --as-new or none
        per_class = dataset.load_report(home_dir, args.dataset).per_class
        print(advise(per_class, base=args.base, pull=0 if args.as_new else None, dataset=args.dataset), file=sys.stderr)
    before = {m.id for m in index.models()}
    try:
        trained = train(
            home_dir,
            args.dataset,
            index=index,
            name=args.name,
            trainer=args.trainer,
            base=args.base,
            options=options,
            token=_token(args),
            confirm=confirm_cost(args),
            progress=progress,
            # (a cloud job is on record before its launch: its instance says whether one was launched)
            on_started=lambda job: started.append(job.instance if job.trainer == "cloud" else job.job_id),
        )
    except TrainingError as e:
        raise CommandError(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C, a closed terminal, a kill (interrupted): still 130, no longer unsaid
        installed = [m for m in index.models() if m.id not in before]
        if installed:  # (cut as its plots were written: "kept in uninstalled/" was said of a model at work)
            ended = f"its model was installed and activated first, as {installed[-1].ref}"
        elif "installing" in states:  # trained: kept where `vibrary models install` takes it from
            ended = f"its trained model is kept in {home_dir / 'uninstalled'} (`vibrary models install` installs it)"
        elif args.trainer == "cloud":
            ended = "its cloud instance is terminated" if any(started) else "nothing was launched"
        elif started and "unsent" in states:  # the trainer out of reach: it was told nothing
            ended = (
                f"the trainer is out of reach, so its job {started[-1]} could not be cancelled there: the trainer"
                " cancels it once nobody has followed it for a while (10 minutes by default), and until then the same"
                " command follows it again"
            )
        elif started and refused:  # (a token removed meanwhile, a fault of the trainer's)
            ended = (
                f"the trainer refused to cancel its job {started[-1]} ({refused[0]}): it cancels a job once nobody"
                " has followed it for a while (10 minutes by default)"
            )
        elif started and "left" in states:  # the same training from another machine follows it too
            ended = (
                "another `vibrary train` of the same dataset follows its job on the trainer (another machine, the"
                " same token), so it goes on there for that one"
            )
        elif started:  # (the trainer keeps its checkpoint: "cancelled" alone read as all of it lost)
            ended = "its job on the trainer is cancelled; the same command goes on from its last finished epoch"
        elif "uploading" in states:  # "its job ... is cancelled" of a job never started
            ended = "nothing was started on the trainer (what was uploaded stays there for the next try)"
        else:  # waiting for a trainer busy with another's training
            ended = "nothing was started on the trainer"
        tqdm.write(f"vibrary: training cancelled; {ended}", file=sys.stderr)
        raise
    finally:
        for bar in bars.values():
            bar.close()
    row = trained.row
    nothing_held_out = trained.accuracy_of == OWN_CLIPS
    accuracy = trained.val_accuracy
    obj = {
        "model": row.name,
        "version": row.version,
        "classes": list(row.classes),
        # a number, as shared/interfaces.md has it (null broke scripts that read it as one); when no clip was
        # held out, on folds of them held out in turn (each scored by a fit of a second on the others), or with no
        # base to fit on, on the clips it learned from, and `accuracy_of` says which
        "val_accuracy": round(accuracy, 4),
        "accuracy_of": trained.accuracy_of,
        "val_clips": trained.summary.get("val_clips"),
        "seconds": round(trained.seconds, 1),
        "plots": trained.plots,
        "summary": trained.summary,
    }
    done = installed_said(row, trained.again)
    human = f"{done}: validation accuracy {trained.val_accuracy:.1%}"
    if trained.accuracy_of != HELD_OUT and not nothing_held_out:  # a small dataset: folds held out in turn
        # (a producer's check: files of the same tags from other material scored 2-21 points lower, 13 on average)
        human += f" on {trained.accuracy_of}; files of other packs than your folders' may score 10 points lower or more"
    if trained.summary.get("folds_stand_in"):  # the dataset's figure, not this version's: alike for any epochs or seed
        # (said beside the advice before the training, the curve's for datasets of this size: two figures to tell apart)
        human = (  # (it read as one sentence of 60 words, "folds", "embedding" and "the curve's" in it)
            f"{done}: {trained.val_accuracy:.0%} right on your own clips held out in turn, each checked by a quick"
            " fit on the others (a figure of your dataset: more epochs do not change it; the one said before training"
            " is what datasets of its size usually get). Files from other packs than yours may score 10 points lower"
        )
    if nothing_held_out:
        human = (
            f"{done}: every clip trained it, none was left to validate on "
            f"(right on {accuracy:.0%} of the clips it learned from, which says little of new ones: `vibrary"
            " dataset show` says what to expect on those)"
        )
    stopped = _what_the_progress_did_not_say(trained.summary, checked, row.classes, args.epochs)
    human += f"\n{stopped}" if stopped else ""
    if chance := as_good_as_chance(accuracy, len(row.classes)):  # installed and active, without a word
        obj["warning"] = chance
        human += f"\n{chance}"
    earlier = [m for m in index.models() if m.name == row.name and m.version < row.version]
    was = max(earlier, key=lambda m: m.version, default=None)
    changed, said = changed_tags(was, row) if was is not None else ({}, "")
    if changed and was is not None:
        obj["tags_changed"] = changed
        human += f"\n{said} (`vibrary models activate {was.ref}` goes back)"
    _out(args, obj, human + f"\nplots: {', '.join(trained.plots)}")
    return 0


CHANCE_MARGIN = 0.1  # accuracy within this of guessing is said to be no better than it


def as_good_as_chance(accuracy: float, n_tags: int) -> str:
    """What to say of a model hardly better than a guess (a `--base none` model right on 50 % of two tags was
    installed and activated with no word of it), or ""."""
    chance = 1 / max(1, n_tags)
    if accuracy >= chance + CHANCE_MARGIN:
        return ""
    return (
        f"that is about as good as guessing ({chance:.0%} for {n_tags} tags): more examples, tags that sound"
        " less alike, or more epochs would help; `vibrary models list` shows the versions to go back to"
    )


def _what_the_progress_did_not_say(
    summary: dict[str, Any], options: str, tags: Sequence[str], asked: int | None = None
) -> str:
    """Why a training ended before the epochs it was given, or "": "epoch 6/30" and then "done" read as a
    training cut short. It stops once accuracy on the held-out clips has not improved for `patience` epochs,
    and keeps the best epoch's weights, not the last's; a dataset of tags the base knows runs no epoch (and
    `asked`, the --epochs given, is said to be unused)."""
    from vibrary.daemon.training import known_said
    from vibrary.trainer.options import TrainConfig

    if fitted := known_said(summary, tags):
        # (`--epochs 1` went unsaid, as if it had been heeded)
        return fitted + (
            f"; --epochs {asked} was not used: a fit runs no epochs (--as-new trains over epochs)" if asked else ""
        )
    run, best = summary.get("epochs_run", 0), summary.get("best_epoch", 0)  # an older trainer: neither
    config = TrainConfig.from_dict(json.loads(options))
    if not run or not best or run >= config.epochs:
        return ""
    return (
        f"stopped early after epoch {run} of {config.epochs}: validation accuracy had not improved for "
        f"{run - best} epochs (patience {config.patience}); kept the weights of epoch {best}, its best"
    )


def cmd_trainer(args: argparse.Namespace) -> int:
    if args.action == "health":  # (a container's HEALTHCHECK: no home of Vibrary's needed, nor made)
        return _trainer_health(args)
    if args.action == "jobs":
        return _trainer_jobs(args)
    data = Path(args.data) if getattr(args, "data", "") else None  # (a cloud job's instance has no home)
    if args.action == "token":
        return _trainer_token(args, data or config.home() / "trainer")
    try:
        if args.action == "run-s3":
            from vibrary.trainer.s3job import JobFailed, run_job
        else:
            from vibrary.trainer.service import TrainerBusy, serve
    except ImportError as e:
        raise CommandError(
            f"the trainer needs PyTorch ({e.name} is missing): in Vibrary's clone, pip install -e '.[trainer]'"
        ) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "run-s3":
        try:
            return run_job(args.url)
        except JobFailed as e:  # a traceback, and no {"error": …} line under --json
            raise CommandError(f"cloud job failed: {e}") from None
    data = data or config.home() / "trainer"
    token = _token(args)
    cert, key = (_tls_file(p, flag) for p, flag in ((args.tls_cert, "--tls-cert"), (args.tls_key, "--tls-key")))
    try:
        serving = serve(data, args.listen, token, cert, key)
    except TrainerBusy as e:
        raise CommandError(f"{e}: stop that one first, or give this one its own folder (--data)") from None
    except OSError as e:  # it said "[Errno 30] Read-only file system: '…/trainer.lock'"
        if data.is_symlink() and not data.exists():
            why = f"it links to {os.readlink(data)}, which is not there: a drive not mounted?"
        elif isinstance(e, (NotADirectoryError, FileExistsError)):
            why = "a file is in its place, or in the place of a folder above it"
        else:
            why = "its disk is read-only" if config.read_only(str(data)) else e.strerror or str(e)
        raise CommandError(
            f"the trainer data folder {data} cannot be used ({why}): give --data a folder to write in"
        ) from None
    tls = " over TLS" if cert else ""
    if args.json:  # a script that starts a trainer knows from this line that it answers, and on which port
        said = {"serving": serving.port, "tls": bool(cert), "data": str(data), "pid": os.getpid()}
        print(json.dumps(said), flush=True)
    if not cert and not is_loopback(args.listen):  # (the daemon says so of its own API; the trainer said nothing)
        print(
            f"vibrary: the trainer on {args.listen} is not encrypted: tokens and spectrograms cross the network in"
            " the clear; on a network you do not trust, serve with --tls-cert and --tls-key (docs/cloud.md)",
            file=sys.stderr,
        )
    print(f"vibrary trainer serving on port {serving.port}{tls} (data in {data})", file=sys.stderr, flush=True)
    stop = threading.Event()
    on_signals(lambda *_: stop.set(), *ENDING_SIGNALS)  # as the daemon: a closed terminal stops it cleanly too
    while not stop.wait(0.5):
        pass
    serving.stop(grace=2)  # a job in training goes on from its last epoch at the next start
    return 0


def _trainer_token(args: argparse.Namespace, data: Path) -> int:
    from vibrary.trainer import tenants

    if args.token_action == "add":
        users = tenants.list_users(data)
        replaced = args.user in users
        if (old := tenants.leftover(data, tenants.check_user(args.user))) is not None:
            # (a user removed, then a name given again: the new holder listed and downloaded the old one's jobs)
            if pidlock.holder(data / "trainer.lock") is not None:
                raise CommandError(
                    f"{args.user}'s jobs and spectrograms from before their token was removed are in {old}, and the"
                    " trainer serving this folder holds them: stop it, then add the token again (they are set aside,"
                    " not given to the new token), or give the new user another name"
                )
            kept = tenants.set_aside(old)
            print(
                f"vibrary: {args.user}'s jobs and spectrograms from before their token was removed are set aside in"
                f" {kept}, not given to the new token: delete that folder once no longer needed",
                file=sys.stderr,
            )
        token = tenants.add_token(data, args.user)
        if not users and (running := tenants.open_jobs(data)):
            print(
                f"vibrary: {many(running, 'training')} of this trainer's callers without a token (queued or training)"
                " cannot be collected now that it takes tokens: `vibrary trainer token remove"
                f" {args.user}` opens it to them again, until they are done",
                file=sys.stderr,
            )
        if replaced:  # (a second add revoked the first token without a word: a user locked out, unsaid)
            print(f"vibrary: replaced the token of {args.user}: the one before no longer works", file=sys.stderr)
        said = f"token for {args.user} (shown once, stored hashed):\n{token}"
        _out(args, {"user": args.user, "token": token, "replaced": replaced}, said)
    elif args.token_action == "remove":
        if not tenants.remove_token(data, args.user):
            raise CommandError(f"no token for user {args.user!r}")
        _out(args, {"user": args.user, "removed": True}, f"removed the token of {args.user}")
    else:
        users = tenants.list_users(data)
        alone = "(no users: the trainer takes the --token it is served with, or none on loopback)"
        _out(args, {"users": users}, "\n".join(users) or alone)
    return 0


def _token(args: argparse.Namespace) -> str:
    """A trainer's token: --token, else $VIBRARY_TRAINER_TOKEN (train, trainer serve and trainer jobs alike)."""
    return str(args.token or os.environ.get("VIBRARY_TRAINER_TOKEN", ""))


def _tls_file(path: str, flag: str) -> bytes | None:
    """A certificate or key file's bytes: "[Errno 13] Permission denied: '/tls/key.pem'" said neither what the
    file was for nor whom it must be readable by (a container runs as its own user)."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        if flag == "--tls-key" and Path(path).stat().st_mode & 0o077:  # (served without a word)
            print(
                f"vibrary: warning: others on this machine can read the TLS key {path}: chmod 600 it",
                file=sys.stderr,
            )
        return data
    except OSError as e:
        env = "VIBRARY_TRAINER_TLS_" + flag.removeprefix("--tls-").upper()
        raise CommandError(
            f"cannot read {path}, the TLS {flag.removeprefix('--tls-')} ({flag} or ${env}): {e.strerror}; this"
            f" trainer runs as uid {os.getuid()}"
        ) from None


def _trainer_jobs(args: argparse.Namespace) -> int:
    """The caller's jobs on a trainer (each user sees only their own): a user of a shared trainer had no way to
    see what of theirs was queued, or how a job of a `vibrary train` they closed ended, but a script."""
    from vibrary.proto import trainer_pb2 as tpb

    from .trainer_client import TrainerClient

    with TrainerClient(args.target, _token(args)) as client:
        jobs = client.jobs()
    for job in jobs:
        state = tpb.Job.State.Name(job.state).lower()
        progress = f", epoch {job.epoch} of {job.epochs}" if job.epochs else ""
        obj = {"id": job.id, "state": state, "phase": job.phase, "epoch": job.epoch, "epochs": job.epochs}
        said = f" ({terminal_safe(job.error)})" if job.error else ""  # (a remote trainer's words)
        _out(args, {**obj, "error": job.error}, f"{job.id}  {state}{progress}{said}")
    if not jobs and not args.json:
        print(f"no jobs of yours on the trainer at {args.target}", file=sys.stderr)
    return 0


def _trainer_health(args: argparse.Namespace) -> int:
    """Exit 0 when the trainer at --target says SERVING: the container's HEALTHCHECK."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .trainer_client import connection_hint, open_channel

    ca = args.tls_ca or os.environ.get("VIBRARY_TRAINER_CA") or os.environ.get("VIBRARY_TRAINER_TLS_CERT") or None
    with open_channel(args.target, ca, args.server_name) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as e:
            hint = connection_hint(e, bool(ca), flags=True)  # (gRPC's words alone said neither serve nor --tls-ca)
            raise CommandError(f"trainer at {args.target}: {e.code().name} {e.details()}{hint}") from None
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    _out(args, {"target": args.target, "status": status}, f"{args.target}: {status}")
    return 0 if serving else 1


def confirm_cost(args: argparse.Namespace) -> Callable[[str], bool]:
    """What `vibrary train --trainer cloud` asks before anything is launched: yes with --yes, else the
    user's answer on a terminal; a script without --yes launches nothing. The estimate itself is shown by
    the training's progress (it was printed twice)."""

    def confirm(text: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print("not launching: no terminal to ask on (pass --yes to accept the cost)", file=sys.stderr)
            return False
        print("launch? [y/N] ", end="", file=sys.stderr, flush=True)  # (input() prompts on stdout: into --json)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return confirm
