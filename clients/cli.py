"""`vibrary`: the command line (contract in shared/interfaces.md).

Every command takes --json: one JSON object per line on stdout, human text and progress bars on stderr.
Exit status 0 on success (per-file errors are reported in the output), 1 when the command itself fails,
2 for usage errors.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import itertools
import json
import math
import os
import re
import signal
import sqlite3
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, NoReturn

from vibrary.daemon import config
from vibrary.daemon.infer import ModelError
from vibrary.daemon.modelref import parse_ref

from .client import DaemonError, DaemonNotRunning
from .daemon_commands import cmd_daemon, cmd_pause, cmd_status, cmd_tray, cmd_watch, on_signals
from .dataset_commands import cmd_dataset, cmd_synonyms
from .errors import json_asked
from .library_commands import cmd_counts, cmd_models, cmd_search, cmd_tag, cmd_tags
from .output import CommandError, Terminated, UsageError, flush_both, terminal_safe, terminated
from .training_commands import cmd_train, cmd_trainer


# -- argument parsing -------------------------------------------------------------------------------------------
def _workers(text: str) -> int:
    n = _count(text)
    if n > config.MOST["workers"]:
        raise argparse.ArgumentTypeError(f"{n}: give {config.MOST['workers']} or fewer")
    return n


def _listen(text: str) -> str:
    """HOST:PORT to serve on, its form checked as `train --trainer` checks its own (exit 2): `--listen 80x`
    exited 1, as if the address were taken."""
    port = text.rpartition(":")[2]
    if text and not (":" in text and port.isascii() and port.isdigit() and int(port) < 65536):
        raise argparse.ArgumentTypeError(f"{text}: expected HOST:PORT, a port from 0 to 65535")
    return text


def _seconds(text: str) -> float:
    """A time to wait: above 0 and finite (0 or -1 failed a healthy trainer's check, inf or nan waited for ever)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0")
    return seconds


def _serve_on(text: str) -> str:
    """A trainer's HOST:PORT, which it must have (a daemon's empty --listen is no TCP at all)."""
    if not text:
        raise argparse.ArgumentTypeError("expected HOST:PORT, a port from 0 to 65535")
    return _listen(text)


def _score(text: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: scores lie between 0 and 1")
    return score


def _parsed_ref(text: str) -> tuple[str, int]:
    """A name no model can have (`--model 'a b'`) is a mistake in the command (exit 2), not a model missing."""
    try:
        name, version = parse_ref(text)
        config.check_name(name, "model")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, version


def _model_ref(text: str) -> str:
    """NAME or NAME@VERSION, checked before anything starts (exit 2)."""
    name, version = _parsed_ref(text)
    return f"{name}@{version}" if version else name


def _path(text: str) -> str:
    """A path given: an empty one (an unset variable, `vibrary watch add "$SAMPLES"`) read as the current
    folder, and `watch add` indexed whatever that was."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return os.path.expanduser(text)  # `--under=~/Samples`: the shell leaves a ~ after = as it is


DATASET_NAME = f"the dataset's name: letters, digits, '-' and '_', at most {config.LONGEST_NAME} characters"


def _dataset_name(text: str) -> str:
    """A name that can be no dataset is a usage error (exit 2) before anything is read: `dataset create a/b
    DIR` walked all of DIR first, then failed (exit 1)."""
    text = _nfc(text)
    try:
        config.check_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _model_name(text: str) -> str:
    """A model's name: the index holds the tags of each model's active version only, so no @VERSION."""
    if not text:  # argparse passes the default through here too
        return text
    name, _ = _parsed_ref(text)
    if "@" in text:
        raise argparse.ArgumentTypeError(f"{text}: give a model name without @VERSION (tags are its active version's)")
    return name


def _nfc(text: str) -> str:
    """A name as names are kept, in composed characters (as parse_ref spells a model's): typed or pasted
    decomposed (macOS file names are), `stimmung_ä` was refused as no name at all."""
    return unicodedata.normalize("NFC", text)


def _new_model_name(text: str) -> str:
    """A name to install a model under, refused as `train --name` refuses one (exit 2) before anything is read."""
    text = _nfc(text)
    if text:  # (argparse passes the default through here too)
        try:
            config.check_name(text, "model")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


MOST = 2**31 - 1  # the largest count an option takes


def _count(text: str) -> int:
    """A whole number of at least 1, refused by argparse (exit 2, a usage line) before anything starts."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give 1 or more")
    if n > MOST:  # the API's 32-bit field: "Value out of range" from protobuf, exit 1
        raise argparse.ArgumentTypeError(f"{n}: give at most {MOST:,}")
    return n


SEARCH_VALUE_OPTIONS = ("--limit", "--min-score", "--under", "--model")


def _takes_value(word: str) -> bool:
    """A search option given its value as the next word: its name, or a prefix of one alone (argparse takes
    `--lim 5` for `--limit 5`, and it was read as a flag: `kick` became the limit)."""
    if not word.startswith("--") or "=" in word:
        return False
    return word in SEARCH_VALUE_OPTIONS or len([o for o in SEARCH_VALUE_OPTIONS if o.startswith(word)]) == 1


def _exclusions_as_words(argv: list[str]) -> list[str]:
    """`vibrary search kick -acoustic`: argparse takes `-acoustic` for an option it does not know (and
    `-hihat` for -h with a value), so a search's `-TAG` words become `NOT TAG` before it parses them. Its
    options go first, for argparse takes query words only in one run (`kick --limit 20 -dark` was refused),
    and global options may come before `search` (`vibrary --json search kick -tom`)."""
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))
    if argv[at : at + 1] != ["search"]:
        return argv
    options: list[str] = []
    words: list[str] = []
    rest = iter(argv[at + 1 :])
    for word in rest:
        if _takes_value(word):  # with its value, whatever it looks like: `--limit -1`, argparse says why
            options += [word, *itertools.islice(rest, 1)]
        elif word.startswith("--") or word == "-h":
            options.append(word)
        elif word.startswith("-") and len(word) > 1:
            words += ["NOT", word[1:]]
        else:
            words.append(word)
    return [*argv[:at], "search", *options, *words]


class _BadArguments(Exception):
    pass


_INVALID_CHOICE = re.compile(r"argument (\S+): invalid choice: (.*?) \(choose from (.*)\)$")


def _unquoted(text: str) -> str:
    """A value as argparse writes it: as repr does in Python 3.11 ("'sotp'", "\"don't\""), bare in later ones."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def _choice_said(message: str) -> str:
    """argparse's "argument {tag,daemon,…}: invalid choice: 'serch' (choose from 'tag', …)" as a person would
    say it, with the choice meant where one is close: `vibrary daemon sotp` said "argument action"."""
    found = _INVALID_CHOICE.match(message)
    if found is None:
        return message
    option, word, choices = found[1], _unquoted(found[2]), [_unquoted(c) for c in found[3].split(", ")]
    near = difflib.get_close_matches(word, choices, n=1)
    said = f"no {word!r}" + (f" (did you mean {near[0]!r}?)" if near else "") + f": one of {', '.join(choices)}"
    return f"{option.split('/')[0]}: {said}" if option.startswith("-") else said


class _Parser(argparse.ArgumentParser):
    """argparse's own, but for a mistake it catches (`--limit 0`, an unknown command): said as every other
    failure is, and with --json also as a JSON line on stdout, where a script had nothing to read. (Its
    subcommands' parsers are of this class too: argparse makes them so.)"""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _BadArguments(f"{_choice_said(message)} (`{self.prog} --help` says more)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A subcommand's words it does not know are refused by it, with its usage and its --help: passed up,
        `vibrary search --bogus` showed the usage of `vibrary` and sent people to `vibrary --help`."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and " " in self.prog:  # (a subcommand takes every word after it: none is left to the one above)
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a --json given before a subcommand (`vibrary models --json list`) is not reset by the
    # subcommand's own default; main() sets False when none was given
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine output: one JSON object per line"
    )
    parser = _Parser(
        prog="vibrary",
        description="Tag your sample library by your own tags.",
        epilog="getting started: `vibrary daemon` in one terminal; in another, `vibrary watch add ~/Samples`, "
        "`vibrary status --wait`, then `vibrary search kick -acoustic`. `vibrary CMD --help` says more of each.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tag", parents=[common], help="tag files and folders now, without the daemon")
    p.add_argument("paths", nargs="+", metavar="PATH", type=_path, help="files, and folders (links in them followed)")
    p.add_argument(
        "--model",
        action="append",
        type=_model_ref,
        metavar="NAME[@VERSION]",
        help="use this model: its active version (else the one active last, else its newest), or VERSION (repeatable)",
    )
    p.add_argument("--top", type=_count, default=3, metavar="K", help="at most K tags per model (default 3)")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("daemon", parents=[common], help="run the daemon in the foreground; `daemon stop` stops it")
    p.add_argument(  # ("daemon start", the first guess, was an invalid choice)
        "action",
        nargs="?",
        choices=["start", "stop"],
        help="stop: the daemon running for this home; start: the same as none (it runs in the foreground)",
    )
    p.add_argument("--listen", default="", type=_listen, metavar="HOST:PORT", help="also serve on TCP (needs a token)")
    p.add_argument("--token", default="", help="token TCP clients must send (default $VIBRARY_TOKEN)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="decode threads (default: config.json's workers, else one per core)",
    )
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("watch", parents=[common], help="manage the daemon's watch folders")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("add", "watch a folder"), ("remove", "stop watching a folder")):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("dir", metavar="DIR", type=_path, help="a folder of samples (its sub-folders too)")
    actions.add_parser("list", parents=[common], help="the watched folders")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", parents=[common], help="what the daemon is doing")
    p.add_argument("--wait", action="store_true", help="show progress until nothing is pending or being listed")
    p.add_argument("--failed", action="store_true", help="every file that failed, and why (else the newest 5)")
    p.set_defaults(func=cmd_status)

    for name, text in (("pause", "pause indexing (changes are still recorded)"), ("resume", "resume indexing")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.set_defaults(func=cmd_pause)

    p = sub.add_parser("tray", parents=[common], help="the system-tray status icon (needs the [tray] extra)")
    p.set_defaults(func=cmd_tray)

    p = sub.add_parser(
        "search",
        parents=[common],
        help="find files by tag: kick -acoustic snare|clap",
        description="Find files by tag. Every tag given must match; snare|clap (or snare OR clap) either one;"
        " -acoustic (or NOT acoustic) leaves files with that tag out; a tag with spaces is found quoted"
        ' ("hi hat") or not, where a model spells it so.'
        " A word no model tags that `vibrary synonyms list` spells a tag with (hh, BD) searches that tag."
        " Surest first with --limit.",
    )
    p.add_argument(
        "query", nargs="*", metavar="QUERY", help="tags: kick snare|clap -acoustic (AND, OR and NOT may be written)"
    )
    p.add_argument(
        "--min-score",
        type=_score,
        default=None,
        help="only tags scoring at least this, even a model's guesses for a file unlike its examples"
        " (default: the tags that hit)",
    )
    p.add_argument("--under", default=None, metavar="DIR", type=_path, help="only files under this folder")
    p.add_argument("--model", type=_model_name, default="", help="only tags from this model")
    p.add_argument(
        "--limit",
        type=_count,
        default=0,
        help="at most this many files, the surest of the tags asked for first (of a query that only leaves tags"
        " out, the first found)",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("tags", parents=[common], help="what the index holds for these files")
    p.add_argument("paths", nargs="+", metavar="PATH", type=_path, help="files, or folders (their files)")
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("counts", parents=[common], help="how many files carry each tag")
    p.add_argument("--model", type=_model_name, default="", help="only this model's tags")
    p.set_defaults(func=cmd_counts)

    p = sub.add_parser("models", parents=[common], help="list, install, activate, deactivate, remove models")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="installed models; * marks the active ones")
    a = actions.add_parser("install", parents=[common], help="install an ONNX model file as a new version")
    a.add_argument("ref", metavar="FILE.onnx", help="a model with Vibrary's metadata (its classes, its spectrogram)")
    a.add_argument("--name", default="", type=_new_model_name, help="install under this name")
    a.add_argument("--inactive", action="store_true", help="install without activating")
    last = "active last, else newest"
    for action, which in (("activate", last), ("deactivate", "active"), ("remove", "newest")):
        a = actions.add_parser(action, parents=[common], help=f"{action} NAME (its {which} version) or NAME@VERSION")
        a.add_argument("ref", type=_model_ref, metavar="NAME[@VERSION]")
    a.add_argument("--all", action="store_true", help="every version of NAME: the model, its tags and files gone")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("dataset", parents=[common], help="labelled examples for training your own tags")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("create", "spectrograms of labelled audio files, stored here"),
        ("add", "more labelled files for a dataset (only they are decoded; its edits stay)"),
    ):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("name", metavar="NAME", type=_dataset_name, help=DATASET_NAME)
        a.add_argument("dirs", nargs="+", metavar="DIR", type=_path, help="folders of examples (see --labels)")
        a.add_argument(
            "--labels",
            choices=["folders", "top", "suggest"],
            help="folders (the default): each file's own folder names its tag (DIR/.../<tag>/*); top: the folder "
            "right under DIR does (DIR/<tag>/.../*); suggest: from folder names, file names and metadata (see "
            "`dataset suggest`)" + ("; an add labels as the dataset was made, unless given" if action == "add" else ""),
        )
        if action == "create":
            a.add_argument(
                "--replace",
                action="store_true",
                help="build NAME anew from these files only, when it exists (its clips and edits go)",
            )
        if action == "add":
            a.add_argument(
                "--restore",
                action="store_true",
                help="files and tags that edits removed (drop, relabel '') join again, and stay in",
            )
    a = actions.add_parser("suggest", parents=[common], help="suggested tags for files, from names and metadata")
    a.add_argument("dirs", nargs="+", metavar="DIR", type=_path)
    a = actions.add_parser("rename", parents=[common], help="rename a tag (to an existing tag: a merge)")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("old", metavar="OLD")
    a.add_argument("new", metavar="NEW")
    a = actions.add_parser("merge", parents=[common], help="merge tags into one")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("tags", nargs="+", metavar="TAG")
    a.add_argument("--into", required=True, metavar="TAG")
    a = actions.add_parser("drop", parents=[common], help="drop tags and their files from the dataset")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("tags", nargs="+", metavar="TAG")
    a = actions.add_parser("relabel", parents=[common], help="give one file another tag ('' drops it)")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("path", metavar="PATH", type=_path)
    a.add_argument("tag", metavar="TAG")
    for action, text in (
        ("show", "classes, counts, upload size and advice on a dataset"),
        ("delete", "delete a dataset (asked first on a terminal)"),
    ):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("--yes", action="store_true", help="delete without asking")
    actions.add_parser("list", parents=[common], help="the datasets in this home")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("synonyms", parents=[common], help="how vendors spell your tags: BD → kick")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every alias and its tag")
    a = actions.add_parser("add", parents=[common], help="one more alias for a tag (a new tag is fine)")
    a.add_argument("alias", metavar="ALIAS")
    a.add_argument("tag", metavar="TAG")
    a = actions.add_parser("remove", parents=[common], help="take out an alias, your own or a built-in one")
    a.add_argument("aliases", nargs="+", metavar="ALIAS")
    p.set_defaults(func=cmd_synonyms)

    p = sub.add_parser("train", parents=[common], help="train a model on a dataset, then install and activate it")
    p.add_argument("dataset", metavar="DATASET", type=_dataset_name, nargs="?")
    p.add_argument("--name", default="", type=_nfc, help="model name (default: the dataset's)")
    p.add_argument("--trainer", default="local", metavar="local|HOST:PORT|cloud", help="where to train (default: here)")
    p.add_argument("--token", default="", help="token of a remote trainer (default $VIBRARY_TRAINER_TOKEN)")
    p.add_argument(
        "--base", choices=["demo", "none"], default="demo", help="demo (transfer from the built-in model) or none"
    )
    p.add_argument(
        "--epochs",
        type=_count,
        default=None,
        help="at most this many epochs (default 20 from the demo model, 40 with --base none; fewer once "
        "validation stops improving)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--as-new",
        action="store_true",
        help="train tags the demo model already knows (kick, snare, piano…, reverb, delay…) as new ones, over epochs, "
        "instead of fitting what it knows of them to your clips",
    )
    p.add_argument("--yes", action="store_true", help="cloud: accept the cost estimate without asking")
    p.add_argument(
        "--cancel",
        action="store_true",
        help="cancel the daemon's training (one a front end started; Ctrl-C cancels this command's own)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("trainer", parents=[common], help="the training service")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("serve", parents=[common], help="run the trainer service in the foreground")
    a.add_argument(
        "--listen", default="127.0.0.1:7878", type=_serve_on, metavar="HOST:PORT", help="default 127.0.0.1:7878"
    )
    a.add_argument(
        "--token",
        default="",
        help="one token for every caller (default $VIBRARY_TRAINER_TOKEN); off loopback it, or a user's of"
        " `trainer token add`, is required",
    )
    a.add_argument("--data", default="", help="where shards and jobs are kept (default $VIBRARY_HOME/trainer)")
    a.add_argument(
        "--tls-cert",
        default=os.environ.get("VIBRARY_TRAINER_TLS_CERT", ""),
        metavar="PEM",
        help="serve TLS with this certificate (default $VIBRARY_TRAINER_TLS_CERT)",
    )
    a.add_argument(
        "--tls-key",
        default=os.environ.get("VIBRARY_TRAINER_TLS_KEY", ""),
        metavar="PEM",
        help="its key (default $VIBRARY_TRAINER_TLS_KEY)",
    )
    a = actions.add_parser("token", parents=[common], help="per-user tokens of this trainer (stored hashed)")
    a.add_argument("--data", default="", help="the trainer's data folder (default $VIBRARY_HOME/trainer)")
    data = _Parser(add_help=False)  # --data after the action too (`token add --data DIR bob`), as before it
    data.add_argument("--data", default=argparse.SUPPRESS, help="the trainer's data folder")
    tokens = a.add_subparsers(dest="token_action", required=True)
    for action, what in (("add", "a new token for USER, printed once"), ("remove", "USER's token and jobs stop")):
        tokens.add_parser(action, parents=[common, data], help=what).add_argument("user")
    tokens.add_parser("list", parents=[common, data], help="users with a token")
    a = actions.add_parser("jobs", parents=[common], help="your jobs on the trainer at --target, and their states")
    a.add_argument("--target", default="127.0.0.1:7878", metavar="HOST:PORT", help="default 127.0.0.1:7878")
    a.add_argument("--token", default="", help="yours (default $VIBRARY_TRAINER_TOKEN; TLS: $VIBRARY_TRAINER_CA)")
    a = actions.add_parser("health", parents=[common], help="exit 0 when the trainer at --target is serving")
    a.add_argument("--target", default="127.0.0.1:7878", metavar="HOST:PORT", help="default 127.0.0.1:7878")
    a.add_argument(
        "--tls-ca",
        default="",
        metavar="PEM",
        help="the certificate it serves, or its CA's (default $VIBRARY_TRAINER_CA, else $VIBRARY_TRAINER_TLS_CERT)",
    )
    a.add_argument(
        "--server-name",
        default="",
        help="name the certificate is for (default: $VIBRARY_TRAINER_TLS_NAME, or the target's host)",
    )
    a.add_argument("--timeout", type=_seconds, default=5.0, help="seconds (default 5)")
    a = actions.add_parser("run-s3", parents=[common], help="run one cloud training job: s3://BUCKET/jobs/ID/job.json")
    a.add_argument("url", metavar="S3_URL")
    p.set_defaults(func=cmd_trainer)
    _choices_named(parser)
    return parser


def _choices_named(parser: argparse.ArgumentParser) -> None:
    """Each missing subcommand said by its choices, as the usage shows them: "the following arguments are
    required: token_action" named a variable of ours."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = action.metavar or "{" + ",".join(action.choices) + "}"
            for sub in dict.fromkeys(action.choices.values()):
                _choices_named(sub)


def main(argv: Sequence[str] | None = None) -> int:
    words = _exclusions_as_words(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(words)
    except _BadArguments as e:
        return _failed(argparse.Namespace(json=json_asked(words)), str(e), 2)
    args.json = getattr(args, "json", False)
    on_signals(terminated, signal.SIGTERM, signal.SIGHUP)  # (the daemon, a trainer, `train` put their own)
    # every command's files are the user's alone, as the daemon's were: under umask 000 `models install`, `dataset
    # create` and `synonyms add` left models, labels and the synonym table writable by any local user. The tray
    # keeps the user's: a file manager it opens (xdg-open) inherits it, and made every new file private
    users = os.umask(0o077)
    if args.command == "tray":
        os.umask(users)
    if getattr(args, "token", ""):
        env = "VIBRARY_TOKEN" if args.command == "daemon" else "VIBRARY_TRAINER_TOKEN"
        print(
            f"vibrary: warning: --token on the command line can be read by every user of this machine (ps);"
            f" set ${env} instead",
            file=sys.stderr,
        )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `vibrary search kick | head`: the reader has all it wants, which is no error to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one when Python flushes at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a writer cut short
    except UsageError as e:
        return _failed(args, str(e), 2)
    except UnicodeEncodeError as e:  # a path from an old archive, passed on to the daemon or the index
        name = e.object if isinstance(e.object, str) else ""
        return _failed(args, f"{os.fsencode(name)!r} is not valid UTF-8: rename it to use it here")
    except (CommandError, DaemonNotRunning, DaemonError, ModelError, ValueError, OSError) as e:
        return _failed(args, str(e))
    except sqlite3.OperationalError as e:  # locked by another process, a full disk: not damage
        return _failed(args, f"{config.home()}: {e}")
    except sqlite3.DatabaseError as e:  # damage found mid-query; opening says more (index.IndexDamaged)
        return _failed(args, f"{config.home()}: a database there is damaged ({e})")
    except KeyboardInterrupt as e:  # each command has cleaned up on its way out
        status = e.status if isinstance(e, Terminated) else 130
        if args.json:  # a script reading stdout has its line, as for any other ending
            with contextlib.suppress(OSError, ValueError):
                print(json.dumps({"error": str(e) or "interrupted", "exit_status": status}))
        flush_both()
        # not through the interpreter's finalisation: a thread of onnxruntime's still at work there aborted
        # the process (134, "terminate called without an active exception") instead of exiting 130
        os._exit(status)


def _failed(args: argparse.Namespace, why: str, status: int = 1) -> int:
    """The command failed: said on stderr, and with --json also as one object on stdout, so that a script
    reading stdout has a line to read (it had none)."""
    print(f"vibrary: {terminal_safe(why)}", file=sys.stderr)
    if args.json:
        with contextlib.suppress(OSError):
            print(json.dumps({"error": why, "exit_status": status}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
