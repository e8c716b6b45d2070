"""The `vibrary` console script.

The command line's imports (numpy, onnxruntime, grpc) take about 0.3 s; a Ctrl-C in that time used to
print a traceback from deep inside one of them. They are made here, where an interrupt can exit as any
interrupted command does: quietly, with status 130.
"""

from __future__ import annotations

import os


def main() -> int:
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:
        os._exit(130)  # as cli.main does: nothing to clean up yet, and no finalisation to trip on
    return command_line()
