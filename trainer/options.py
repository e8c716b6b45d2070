"""What a training can be asked to do: the options of `vibrary train` and of the Train RPC, checked by the
daemon before it starts a trainer or uploads a byte (this module needs no torch), and again by the trainer.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields

PRECISIONS = ("auto", "float32", "bfloat16")
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


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
    body_lr: float = 0.05  # a pretrained body's learning rate, as a share of lr (0: only batch norm adapts)
    dropout: float = 0.2  # after each convolution block but the first
    head_dropout: float = 0.5  # on the embedding, before the classifier
    device: str = "auto"  # "auto": CUDA when present, else the CPU
    precision: str = "auto"  # of the training steps: "auto", "float32" or "bfloat16" (see mixed_precision)

    @classmethod
    def from_dict(cls, raw: dict[str, object], strict: bool = True) -> TrainConfig:
        """The options, checked; `strict=False` for a job record an older version wrote and trained on,
        which took 0 and 1 for booleans and 5.0 for a count: it must go on, not vanish."""
        known = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        for name, value in raw.items() if strict else ():  # "x" or true where a number belongs: said, not a TypeError
            want = type(known[name])
            fits = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
            if not fits and not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"training option {name}: {json.dumps(value)} is not {_KINDS[want]}")
        config = cls(**raw)  # type: ignore[arg-type]
        if config.epochs < 1 or config.batch_size < 1 or config.patience < 1 or config.seed < 0:
            raise ValueError("epochs, batch_size and patience must be 1 or more, seed 0 or more")
        rates = (config.lr, config.weight_decay, config.body_lr, config.mixup_alpha, config.label_smoothing)
        if not all(math.isfinite(x) and x >= 0 for x in rates) or config.lr == 0:
            raise ValueError("lr must be above 0; weight_decay, body_lr, mixup_alpha, label_smoothing 0 or more")
        if not all(
            0 <= x < 1 for x in (config.val_fraction, config.dropout, config.head_dropout, config.label_smoothing)
        ):
            raise ValueError("val_fraction, dropout, head_dropout and label_smoothing must lie within [0, 1)")
        if config.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {config.precision!r}; known: {list(PRECISIONS)}")
        return config
