"""An epoch-by-epoch snapshot of a training, so that one cut off (a reboot, a logout, a crash) goes on
from its last finished epoch instead of from scratch: an hour of CPU training is an hour a producer does
not want to spend twice. A cloud job (trainer/s3job.py) keeps its snapshot in the bucket, for the
instance that replaces one that ended mid-training.

The snapshot holds everything the next epoch depends on — weights, optimiser and schedule, the best epoch
so far and every random generator's state — so a resumed training ends with the same model as one never
cut off. It is keyed by a fingerprint of the data and the options: a snapshot of another training is
never resumed, it is started afresh over it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vibrary.daemon import atomic

# options added after checkpoints were first written: left out of a fingerprint at their default, so that a
# trainer upgraded while a job trains goes on from that job's checkpoint (a new option restarted it at epoch 0)
ADDED_LATER = {"lofi": 0.0}


def fingerprint(config: Any, settings: str, *arrays: np.ndarray) -> str:
    """What makes two trainings the same one: the options, other settings (the base, the spectrogram
    parameters) and every input array's bytes."""
    options = {k: v for k, v in asdict(config).items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode() + settings.encode())
    for a in arrays:
        digest.update(str((a.dtype.str, a.shape)).encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()


Modules = dict[str, Any]  # name → anything with state_dict / load_state_dict (None: absent in this training)


def capture(modules: Modules, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Every module's state and every random generator the next epoch draws from (numpy's, the
    augmentation's, torch's global one for dropout and mixup, CUDA's when there)."""
    state = {name: module.state_dict() for name, module in modules.items() if module is not None}
    return state | {
        "rng": rng.bit_generator.state,
        "gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(state: dict[str, Any], modules: Modules, rng: np.random.Generator, gen: torch.Generator) -> None:
    for name, module in modules.items():
        if module is not None:
            module.load_state_dict(state[name])
    rng.bit_generator.state = state["rng"]
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Written beside and renamed over: a cut during the write leaves the previous epoch's snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing(path) as f:
        torch.save(state, f)


def load(path: Path | None, key: str) -> dict[str, Any] | None:
    """The snapshot at `path` when it is one of this training (`key`); None to start from epoch 1."""
    if path is None or not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: the training starts over it, nothing else depends on it
        return None
    return state if state.get("key") == key else None
