"""The trainer (needs the [trainer] extra, PyTorch): trains a TagNet on spectrogram shards and returns it as
ONNX, run in-process by the daemon or as the gRPC service of `vibrary trainer serve`, locally or on a GPU.

matplotlib (the plots of every job) keeps its font cache in the Vibrary home, not in ~/.cache/matplotlib:
Vibrary writes only in its home (and importing vibrary.daemon keeps onnxruntime's telemetry off)."""

import os

from vibrary.daemon import config

os.environ.setdefault("MPLCONFIGDIR", str(config.home(create=False) / "matplotlib"))
