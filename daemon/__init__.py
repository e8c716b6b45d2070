"""The daemon and what it shares with the clients and the trainer (decode, spectrogram, infer, index).

onnxruntime's official builds keep a device id and an event store under ~/.cache/Microsoft and send usage
events to Microsoft over HTTPS, unless told not to before they start: Vibrary writes only in its home, and a
producer's machine sends nothing to anyone. Set here, where every process that runs a model passes first.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
