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


def main() -> int:
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:  # as cli.main does: nothing to clean up yet, and no finalisation to trip on
        if json_asked(sys.argv[1:]):  # a script reading stdout has its last line (it had none)
            print(json.dumps({"error": "interrupted", "exit_status": 130}), flush=True)
        os._exit(130)
    return command_line()
