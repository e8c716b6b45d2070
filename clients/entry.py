"""The `vibrary` console script.

The command line's imports (numpy, onnxruntime, grpc) take about 0.3 s; a Ctrl-C in that time used to
print a traceback from deep inside one of them. They are made here, where an interrupt can exit as any
interrupted command does: quietly, with status 130.
"""

from __future__ import annotations

import json
import os
import sys

from .errors import json_asked

# commands that go on with no standard output: they print little, and a launcher may close it
_QUIET = (["daemon"], ["tray"], ["trainer", "serve"])


def _opened_on_null(fd: int) -> None:
    """Hold a closed standard stream's fd open on /dev/null: else the next file opened (the index, a log) took
    that number, and whatever writes to the stream would write into it."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def main() -> int:
    if sys.stderr is None:  # started with it closed (`2>&-`): the progress bar raised, and nothing was printed
        _opened_on_null(2)
        sys.stderr = os.fdopen(2, "w")
    if sys.stdout is None:  # (`>&-`): a command's results went nowhere, and it ended 0
        _opened_on_null(1)
        sys.stdout = os.fdopen(1, "w")
        if not any(sys.argv[1 : 1 + len(words)] == words for words in _QUIET):
            print("vibrary: standard output is closed: the results could not be written", file=sys.stderr)
            return 1
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:  # as cli.main does: nothing to clean up yet, and no finalisation to trip on
        if json_asked(sys.argv[1:]):  # a script reading stdout has its last line (it had none)
            print(json.dumps({"error": "interrupted", "exit_status": 130}), flush=True)
        os._exit(130)
    return command_line()
