"""The `vibrary` console script.

The command line's imports (numpy, onnxruntime, grpc) take about 0.3 s; a Ctrl-C in that time used to
print a traceback from deep inside one of them. They are made here, where an interrupt can exit as any
interrupted command does: quietly, with status 130.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from .errors import json_asked

_VALUED = frozenset({"--listen", "--token", "--workers", "--data", "--tls-cert", "--tls-key"})  # (they take a value)


def _quiet(argv: list[str]) -> bool:
    """Whether the command goes on with no standard output: the daemon, the tray and a trainer print little,
    and a launcher may close it (not `daemon stop`, which says what it stopped)."""
    words, valued = [], False
    for a in argv:  # the words but the options and their values (`daemon --token T stop`, `--listen X`)
        if not valued and not a.startswith("-"):
            words.append(a)
        valued = a in _VALUED
    daemon = words[:1] == ["daemon"] and "stop" not in words
    return daemon or words[:1] == ["tray"] or words[:2] == ["trainer", "serve"]


def _opened_on_null(fd: int) -> TextIO:
    """A closed standard stream's fd held open on /dev/null: else the next file opened (the index, a log) took
    that number, and whatever went to the stream went into it. Written as Python writes its own (names that are
    not UTF-8 as \\xe9: strict, they failed the command)."""
    null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)
    return os.fdopen(fd, "r" if fd == 0 else "w", buffering=1 if fd == 2 else -1, errors="backslashreplace")


def main() -> int:
    if sys.stdin is None:  # (`<&-`)
        sys.stdin = _opened_on_null(0)
    if sys.stderr is None:  # started with it closed (`2>&-`): the progress bar raised, and nothing was printed
        sys.stderr = _opened_on_null(2)
    if sys.stdout is None:  # (`>&-`): a command's results went nowhere, and it ended 0
        sys.stdout = _opened_on_null(1)
        if not _quiet(sys.argv[1:]):
            print("vibrary: standard output is closed: the results could not be written", file=sys.stderr)
            return 1
    # gRPC's own log lines ("I1207 … ssl_transport_security.cc:2563] Handshake failed …") reached a command's
    # terminal beside its own words for the same failure; read when grpc is first imported, below. A server
    # (the daemon, a trainer) keeps gRPC's errors on its stderr
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if _quiet(sys.argv[1:]) else "NONE")
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:  # as cli.main does: nothing to clean up yet, and no finalisation to trip on
        if json_asked(sys.argv[1:]):  # a script reading stdout has its last line (it had none)
            print(json.dumps({"error": "interrupted", "exit_status": 130}), flush=True)
        os._exit(130)
    return command_line()
