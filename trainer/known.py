"""Tags the base model already knows: a user's `reverb` starts from what the demo learned of reverb.

The demo model's body was trained beside a second head on 13,600 effect clips (docs/demo-model.md). A head
fitted on its frozen embedding over those clips (`scripts/fit_known.py`) names the effect of notes from
soundfonts and programs it never heard 80 % of the time, where ten clips a class of the user's reach 66 %
from imprinted class means, and fine-tuning the network from that head on them lost four points of it
(docs/figure3.md, "Stop 29"). So a dataset whose tags are half or more these classes is fitted as a logistic
regression on the base's frozen embedding, pulled towards the known rows: the user's clips correct what is
known, they do not replace it, and no epoch is spent; its other tags are fitted beside them from nothing (a
dataset of 12 effects with 3 or 6 unknown: 0.77 and 0.75, against 0.66 all trained as new). The demo's own
15 instrument classes are known the same way, from its head's rows: a `kick`/`snare`/`hihat` dataset (the
names the suggestions give a vendor's `BD`, `SD`, `HH`) trained over epochs forgot much of what the demo knew
of them: ten MuseScore clips a class of five instruments, then 50 FluidR3 notes (a bank the demo was trained
on): 34 right trained as new, 48 from the rows, as many as the demo itself. On banks the base never heard,
the rows are worth what the base is (0.69 from one clip a class, where new tags need ten for 0.68:
docs/figure3.md, "Stop 30"). A dataset of fewer known tags trains as before. The rows ship beside the base
they were fitted on and count only for it (its hash is in the file): a retrained demo needs them refitted.
The file is JSON and this module imports torch only to fit, so the daemon reads which tags are known (its
advice before a training) without PyTorch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .options import BUILTIN_DIR, TrainConfig, base_path

if TYPE_CHECKING:
    import torch

FILE = BUILTIN_DIR / "demo-known.json"  # beside any other base checkpoint X.pt: X-known.json
BIAS_SHARE = 0.1  # the pull on the biases, as a share of that on the weights: a class's prior frequency may move
# Tags known, at least, for a dataset to start from the known rows: with 3 or 6 of the 12 effects unknown, the
# fit beside the known rows was right on 0.77 and 0.75 of the test clips, against 0.66 trained as new
# (docs/figure3.md, "Stop 29"); fewer known tags were not measured.
MOST = 0.5
NEW_L2 = 1e-3  # a clip, of a tag the base does not know fitted beside known ones (as scripts/fit_known.py's rows)
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

    def rows(self, tags: list[str]) -> list[int | None] | None:
        """The known class of each tag, in order (None: a tag it does not know, or a second name of a class
        another tag has: delay and echo), when two tags at least, and at least MOST of them, are known, all
        of one family; else None: the dataset trains as new (`clean` beside `explicit` is not an effects set)."""
        picked: list[int | None] = []
        for i in self._named(tags):
            picked.append(i if i not in picked else None)
        known = [i for i in picked if i is not None]
        if len(known) < max(2, MOST * len(tags)):
            return None
        return picked if len({self.families[i] for i in known}) == 1 else None

    def _named(self, tags: Sequence[str]) -> list[int | None]:
        """The class each tag names, by its name or an alias (None: none)."""
        index = {_key(c): i for i, c in enumerate(self.classes)}
        index |= {_key(alias): index[_key(c)] for alias, c in self.aliases.items()}
        return [next((index[k] for k in _singulars(tag) if k in index), None) for tag in tags]

    def twins(self, tags: Sequence[str]) -> list[tuple[str, str, str]]:
        """(tag, earlier tag, class) of each tag that names a class an earlier tag names too (`dry` beside
        `clean`): it trains as a new tag beside the other, where one tag of both was meant."""
        first: dict[int, str] = {}
        found = []
        for tag, i in zip(tags, self._named(tags), strict=True):
            if i is None:
                continue
            if i in first:
                found.append((tag, first[i], self.classes[i]))
            else:
                first[i] = tag
        return found

    def family(self, tags: list[str]) -> str | None:
        """The family of the rows these tags start from (those it knows of them), else None: trained as new."""
        rows = self.rows(tags)
        return self.families[next(i for i in rows if i is not None)] if rows else None

    def fit(
        self, embedded: torch.Tensor, labels: torch.Tensor, rows: list[int | None], pull: float
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, weight, bias) of the head for these clips: a known tag's row starts at the
        known one and is pulled towards it with `pull` × their squared distance, beside the summed
        cross-entropy of the clips (ten clips a class of one sound bank move it little, hundreds more); a
        tag it does not know starts at zero under a plain L2 of NEW_L2 a clip, as the known rows were fitted."""
        import torch

        weight, bias = np.zeros((len(rows), self.weight.shape[1]), np.float32), np.zeros(len(rows), np.float32)
        pulls = np.full(len(rows), NEW_L2 * len(labels))
        for j, i in enumerate(rows):
            if i is not None:
                weight[j], bias[j], pulls[j] = self.weight[i], self.bias[i], pull
        tensors = (torch.from_numpy(a) for a in (weight, bias, self.mean, self.scale, pulls))
        return fit_head(embedded, labels, *tensors)


def starts_from(rows: Known | None, tags: Sequence[str], pull: float | None = None) -> list[int | None] | None:
    """The known row each tag starts from (None: fitted beside them from nothing), or None: the dataset trains
    over epochs as new tags. The one rule that the trainer fits by, the cloud estimate prices by and the
    advice reads its curve by: the base has rows (`rows`), they cover the tags (`Known.rows`), and the pull
    towards them (`known_pull`; None: the default) is not 0, which is `vibrary train --as-new`."""
    if rows is None or (TrainConfig.known_pull if pull is None else pull) == 0:
        return None
    return rows.rows(list(tags))


def fit_head(
    embedded: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    pull: float | torch.Tensor,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """A logistic regression of the embeddings, in the space standardised by mean and scale, with an L2 pull
    of `pull` (one, or one a row) towards (weight, bias) (zeros: plain L2); returned folded back to the raw
    embedding."""
    import torch
    import torch.nn.functional as F

    x = ((embedded - mean) / scale).double()
    y = labels.long()
    w0 = (weight * scale).double()  # the same logits in the standardised space
    b0 = (bias + weight @ mean).double()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    pulls = torch.as_tensor(pull, dtype=torch.float64).reshape(-1)  # (1,) or one a row
    optimizer = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        ce = F.cross_entropy(x @ w.T + b, y, reduction="sum")
        held = (pulls[:, None] * (w - w0).square()).sum() + (BIAS_SHARE * pulls * (b - b0).square()).sum()
        value = (ce + held) / len(y)
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        mean_ce = float(F.cross_entropy(x @ w.T + b, y))
        folded = (w / scale).float()
        return mean_ce, folded, (b - w @ (mean / scale).double()).float()


def file_of(base: str) -> Path | None:
    """Where the known rows of a base would be: FILE for the built-in one, X-known.json beside a checkpoint X.pt."""
    found = _paths(base)
    return found[0] if found else None


def _paths(base: str) -> tuple[Path, Path] | None:
    """(the known rows' file, the base's checkpoint); None for no base or a checkpoint that is not there."""
    try:
        path = base_path(base)
    except FileNotFoundError:
        return None
    if path is None:
        return None
    return (FILE if base == "demo" else path.with_name(f"{path.stem}-known.json")), path


def load(base: str = "demo") -> Known | None:
    """The known rows of a base; None where it has none, where they were fitted on another version of it (a
    retrained demo whose rows were not refitted) or cannot be read: said in the log, once a version of either
    file (the daemon's advice asks at every dataset edit)."""
    found = _paths(base)
    if found is None or not found[0].exists():
        return None
    file, path = found
    try:
        stat = path.stat()
        return _read(file, file.read_text(), path, (stat.st_mtime_ns, stat.st_size))
    except OSError as e:
        log.warning("%s cannot be read (%s): tags the base knows train as new", file, e)
        return None


@functools.lru_cache(maxsize=4)
def _read(file: Path, text: str, base: Path, _base_version: tuple[int, int]) -> Known | None:
    """Cached by the file's text (97 kB) and the base's time and size: hashing the base costs more."""
    try:
        raw = json.loads(text)
        if raw["base"] != hashlib.sha256(base.read_bytes()).hexdigest():
            log.warning("%s was fitted on another %s than this one: not used (scripts/fit_known.py)", file, base.name)
            return None
        weight, bias, mean, scale = (np.array(raw[k], np.float32) for k in ("weight", "bias", "mean", "scale"))
        classes, families, aliases = list(raw["classes"]), list(raw["families"]), dict(raw["aliases"])
        n, dim = weight.shape
        if (bias.shape, mean.shape, scale.shape, len(classes), len(families)) != ((n,), (dim,), (dim,), n, n):
            raise ValueError("its rows, classes and families do not match in number")
        if not (scale > 0).all() or not all(np.isfinite(a).all() for a in (weight, bias, mean)):
            raise ValueError("it holds a scale of 0 or numbers that are not finite")
        if not all(isinstance(x, str) for x in [*classes, *families, *aliases, *aliases.values()]):
            raise ValueError("its names are not all text")
        if set(aliases.values()) - set(classes):
            raise ValueError(f"aliases of no class: {sorted(set(aliases.values()) - set(classes))}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        log.warning("%s cannot be read (%s): tags the base knows train as new", file, e)
        return None
    return Known(classes, families, aliases, weight, bias, mean, scale)
