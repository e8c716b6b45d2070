"""What a training can be asked to do: the options of `vibrary train` and of the Train RPC, checked by the
daemon before it starts a trainer or uploads a byte, and again by the trainer; the base it starts from, and
what it hands back. This module needs no torch: the trainer service answers at once and loads torch with its
first job (4 s of imports that a service which only stores uploads or lists jobs never needs).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vibrary.daemon.spectrogram import SpectrogramParams

BUILTIN_DIR = Path(__file__).parent / "builtin"
RESULT_FILES = ("model.onnx", "learning_curve.png", "confusion_matrix.png")  # what a finished job hands back
PRECISIONS = ("auto", "float32", "bfloat16")
# a job's phase while the head of tags the base knows is fitted (known.py): seconds and no epochs, which the
# front ends say (they said "epoch 1/1" of a `--epochs 30`)
FITTING = "fitting"
LOST_TRAINER = "lost the trainer"  # a message said while training goes on (the state stays as it was)
MAX_EPOCHS = 10_000
DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,2})?")
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


class Cancelled(Exception):
    """A training stopped on request (a cancel, or a service suspending its jobs)."""


def base_path(base: str) -> Path | None:
    """Where the base checkpoint of 'demo' or a path lives (None for 'none'); FileNotFoundError if absent.
    Cheap, so a job request is checked before it is queued and the weights are loaded once, by the job."""
    if base == "none":
        return None
    path = BUILTIN_DIR / "demo.pt" if base == "demo" else Path(base)
    if not path.exists():
        if base == "demo":
            raise FileNotFoundError("the built-in demo model's checkpoint is not installed; train with --base none")
        raise FileNotFoundError(f"no base checkpoint at {path}")
    return path


def check_fits(base: str, params: SpectrogramParams) -> None:
    """ValueError for spectrograms the base's network cannot take (other mel bands, two channels), said when
    the job is asked for: it was queued, and failed after the wait with "base model does not fit this network
    (differs in ['embed.0.weight'])". The demo was trained on the daemon's default parameters."""
    from vibrary.daemon.spectrogram import SpectrogramParams  # (numpy: not for the tray, which reads this module)

    demo = SpectrogramParams()
    if base == "demo" and (params.channels, params.n_mels) != (demo.channels, demo.n_mels):
        raise ValueError(
            f"spectrograms of {params.n_mels} mel bands, {params.channels} channel(s) do not fit the demo base"
            f" ({demo.n_mels} mel bands, {demo.channels} channel): train with base none"
        )


def parse(text: str) -> dict[str, object]:
    """Training options as JSON text, read; ValueError that says so when they are not a JSON object."""
    try:
        given = json.loads(text)
    except ValueError as e:
        raise ValueError(f"training options are not JSON: {e}") from None
    except RecursionError:  # ("[" * 100,000): UNKNOWN, and a traceback in the log
        raise ValueError("training options are nested too deeply to be options") from None
    if not isinstance(given, dict):
        raise ValueError("training options must be a JSON object")
    return given


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.01
    mixup_alpha: float = 0.2
    val_fraction: float = 0.2
    patience: int = 10
    seed: int = 0
    augment: bool = True
    masks: bool = True  # SpecAugment time/mel masks (part of augment)
    lofi: float = 0.0  # the share of clips made lo-fi copies (augment.LoFi; part of augment): docs/demo-model.md
    body_lr: float = 0.05  # a pretrained body's learning rate, as a share of lr (0: only batch norm adapts)
    dropout: float = 0.2  # after each convolution block but the first
    head_dropout: float = 0.5  # on the embedding, before the classifier
    device: str = "auto"  # "auto": CUDA when present, else the CPU
    precision: str = "auto"  # of the training steps: "auto", "float32" or "bfloat16" (see mixed_precision)
    # how hard a dataset of tags the base already knows is held to what it knows (trainer/known.py), as the
    # weight of their squared distance beside the clips' summed loss; 0: such tags train as any others
    known_pull: float = 100.0

    @classmethod
    def from_dict(cls, raw: dict[str, object], strict: bool = True) -> TrainConfig:
        """The options, checked; `strict=False` for a job record an older version wrote and trained with
        (0 and 1 for booleans, 5.0 for a count, a patience of 0): only what it checked then is checked, and
        whole numbers written as floats are read as the counts they are, so the job goes on."""
        known = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        if not strict:
            raw = {
                k: int(v) if type(known[k]) is int and isinstance(v, float) and v.is_integer() else v
                for k, v in raw.items()
            }
        for name, value in raw.items() if strict else ():  # "x" or true where a number belongs: said, not a TypeError
            want = type(known[name])
            fits = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
            if not fits and not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"training option {name}: {json.dumps(value)} is not {_KINDS[want]}")
        config = cls(**raw)  # type: ignore[arg-type]
        if config.epochs < 1 or config.batch_size < 1 or not 0 <= config.val_fraction < 1:
            raise ValueError("epochs and batch_size must be 1 or more, val_fraction within [0, 1)")
        if config.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {config.precision!r}; known: {list(PRECISIONS)}")
        if strict:
            config.check_ranges()
        return config

    def check_ranges(self) -> None:
        if self.patience < 1 or not 0 <= self.seed < 2**31:
            raise ValueError("patience must be 1 or more, seed from 0 to 2147483647")
        if self.epochs > MAX_EPOCHS:  # a shared trainer runs one job at a time: 10^9 epochs held it for good
            raise ValueError(f"epochs must be {MAX_EPOCHS} or fewer")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"unknown device {self.device!r}: auto, cpu, cuda or cuda:N")
        if not 0 <= self.lofi <= 1:
            raise ValueError("lofi is a share of the clips: from 0 to 1")
        rates = (self.lr, self.weight_decay, self.body_lr, self.mixup_alpha, self.label_smoothing, self.known_pull)
        if not all(math.isfinite(x) and x >= 0 for x in rates) or self.lr == 0:
            raise ValueError(
                "lr must be above 0; weight_decay, body_lr, mixup_alpha, label_smoothing, known_pull 0 or more"
            )
        if not all(0 <= x < 1 for x in (self.dropout, self.head_dropout, self.label_smoothing)):
            raise ValueError("dropout, head_dropout and label_smoothing must lie within [0, 1)")
