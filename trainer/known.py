"""Tags the base model already knows: a user's `reverb` starts from what the demo learned of reverb.

The demo model's body was trained beside a second head on 13,600 effect clips (docs/demo-model.md). A head
fitted on its frozen embedding over those clips (`scripts/fit_known.py`) names the effect of notes from
soundfonts and programs it never heard 80 % of the time, where ten clips a class of the user's reach 67 %
from imprinted class means, and fine-tuning the network from that head on them lost four points of it
(docs/figure3.md, "Stop 29"). So a dataset whose every tag is one of these classes is fitted as a logistic
regression on the base's frozen embedding, pulled towards the known rows: the user's clips correct what is
known, they do not replace it, and no epoch is spent. A dataset with any other tag trains as before: rows
fitted on thousands of clips and class means of ten do not share a scale. The rows ship beside the base they
were fitted on and count only for it (its hash is in the file): a retrained demo needs them refitted. The
file is JSON and this module imports torch only to fit, so the daemon reads which tags are known (its
advice before a training) without PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .options import BUILTIN_DIR, base_path

if TYPE_CHECKING:
    import torch

FILE = BUILTIN_DIR / "demo-known.json"  # beside any other base checkpoint X.pt: X-known.json
BIAS_SHARE = 0.1  # the pull on the biases, as a share of that on the weights: a class's prior frequency may move
log = logging.getLogger(__name__)


def _key(tag: str) -> str:
    """`Ring Mod`, `ring-mod` and `ringmod` alike: letters and digits, lower case."""
    return re.sub(r"[\W_]+", "", tag.lower())


def _singulars(tag: str) -> list[str]:
    """The tag's key, then as it would be without a plural's s or es (reverbs, echoes; chorus stays itself)."""
    word = _key(tag)
    return [word, *(word[: -len(end)] for end in ("s", "es") if len(word) > len(end) + 2 and word.endswith(end))]


@dataclass(frozen=True)
class Known:
    classes: list[str]
    families: list[str]  # of each class: rows of one family were fitted together, on one scale
    aliases: dict[str, str]  # other names of the classes (dry → clean, echo → delay)
    weight: np.ndarray  # (classes, embedding): logits = embedding @ weight.T + bias
    bias: np.ndarray
    mean: np.ndarray  # the embedding's mean and spread over the clips the rows were fitted on: the space
    scale: np.ndarray  # in which the pull towards them is measured, whatever the embedding's scale

    def rows(self, tags: list[str]) -> list[int] | None:
        """The known class of each tag, in order; None unless every tag is a different one of them, all of
        one family."""
        index = {_key(c): i for i, c in enumerate(self.classes)}
        index |= {_key(alias): index[_key(c)] for alias, c in self.aliases.items()}
        picked = [next((index[k] for k in _singulars(t) if k in index), None) for t in tags]
        if any(i is None for i in picked) or len(set(picked)) < len(picked):
            return None
        if len({self.families[i] for i in picked if i is not None}) > 1:
            return None
        return [i for i in picked if i is not None]

    def family(self, tags: list[str]) -> str | None:
        """The family of these tags when a training of them starts from the known rows, else None."""
        rows = self.rows(tags)
        return self.families[rows[0]] if rows else None

    def fit(
        self, embedded: torch.Tensor, labels: torch.Tensor, rows: list[int], pull: float
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, weight, bias) of the head for these clips, started at and pulled towards the
        known rows with `pull` × their squared distance, beside the summed cross-entropy of the clips: ten
        clips a class of one sound bank move the rows little, hundreds move them more."""
        import torch

        weight, bias, mean, scale = (
            torch.from_numpy(a) for a in (self.weight[rows], self.bias[rows], self.mean, self.scale)
        )
        return fit_head(embedded, labels, weight, bias, mean, scale, pull)


def fit_head(
    embedded: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    pull: float,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """A logistic regression of the embeddings, in the space standardised by mean and scale, with an L2 pull
    of `pull` towards (weight, bias) (zeros: plain L2); returned folded back to the raw embedding."""
    import torch
    import torch.nn.functional as F

    x = ((embedded - mean) / scale).double()
    y = labels.long()
    w0 = (weight * scale).double()  # the same logits in the standardised space
    b0 = (bias + weight @ mean).double()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        ce = F.cross_entropy(x @ w.T + b, y, reduction="sum")
        value = (ce + pull * ((w - w0).square().sum() + BIAS_SHARE * (b - b0).square().sum())) / len(y)
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        mean_ce = float(F.cross_entropy(x @ w.T + b, y))
        folded = (w / scale).float()
        return mean_ce, folded, (b - w @ (mean / scale).double()).float()


def file_of(base: str) -> Path | None:
    """Where the known rows of a base would be: FILE for the built-in one, X-known.json beside a checkpoint X.pt."""
    try:
        path = base_path(base)
    except FileNotFoundError:
        return None
    if path is None:
        return None
    return FILE if base == "demo" else path.with_name(f"{path.stem}-known.json")


def load(base: str = "demo") -> Known | None:
    """The known rows of a base; None where it has none, or when they were fitted on another version of it
    (said in the log: a retrained demo whose rows were not refitted)."""
    file = file_of(base)
    if file is None or not file.exists():
        return None
    raw = json.loads(file.read_text())
    path = base_path(base)
    assert path is not None
    if raw["base"] != hashlib.sha256(path.read_bytes()).hexdigest():
        log.warning("%s was fitted on another %s than this one: not used (scripts/fit_known.py)", file, path.name)
        return None
    arrays = (np.array(raw[k], np.float32) for k in ("weight", "bias", "mean", "scale"))
    return Known(list(raw["classes"]), list(raw["families"]), dict(raw["aliases"]), *arrays)
