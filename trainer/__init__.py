"""The trainer (needs the [trainer] extra, PyTorch): trains a TagNet on spectrogram shards and returns it as
ONNX, run in-process by the daemon or as the gRPC service of `vibrary trainer serve`, locally or on a GPU."""
