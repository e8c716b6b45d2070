"""How many examples do I need? Expected accuracy at a dataset's size, read off a measured curve.

`builtin/examples_curve.json` holds test accuracy against examples per class for an instrument set and
an effects set, each as the demo's classes train (from its rows of them, vibrary.trainer.known) and as new
tags train (`{"instruments": {"10": 0.68, ...}, "instruments as new": {...}, "effects": ..., "source": "..."}`),
as `docs/figure3` measures them. The smallest class limits a model most, so advice is about that class;
between measured sizes accuracy is interpolated on a log scale of the size, as such curves are drawn. A
dataset of tags the demo knows is read off their family's curve; any other (moods, a mix) off the
instruments curve as new.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path

from vibrary.trainer import known

from .shards import too_few

CURVE = Path(__file__).parent / "builtin" / "examples_curve.json"
GAIN = 0.05  # more examples are worth suggesting when they buy at least this much accuracy


def load_curve(curve: str = "instruments", path: Path = CURVE) -> tuple[list[tuple[int, float]], str]:
    """`instruments` or `effects`: as such tags train (from the rows the demo has of them); with ` as new`
    (`instruments as new`): as tags it does not know, or `--as-new`, train; instruments where it is missing."""
    raw = json.loads(path.read_text())
    points = sorted((int(n), float(acc)) for n, acc in raw.get(curve, raw["instruments"]).items())
    return points, str(raw.get("source", ""))


def expected(n: int, points: list[tuple[int, float]]) -> float:
    """Accuracy at n examples per class; clamped to the curve's ends."""
    if n <= points[0][0]:
        return points[0][1]
    for (n0, a0), (n1, a1) in itertools.pairwise(points):
        if n <= n1:
            return a0 + (a1 - a0) * (math.log(n) - math.log(n0)) / (math.log(n1) - math.log(n0))
    return points[-1][1]


def advise(per_class: Mapping[str, int], family: str = "", path: Path = CURVE, from_known: bool = True) -> str:
    """One or two sentences for people: what to expect now, and what more examples would buy. `family`: the
    curve to read (default: the known tags' family when they will train from the known rows, else instruments)."""
    if not per_class:
        return ""
    if why := too_few(dict(per_class)):  # said at `dataset show` and after each edit, not after an upload
        return f"cannot train yet: {why} (`vibrary dataset add` more, or relabel or drop them)"
    rows = known.load()
    known_family = rows.family(list(per_class)) if rows is not None else None
    family = family or known_family or "instruments"
    from_rows = from_known and family == known_family
    points, source = load_curve(family if from_rows else f"{family} as new", path)
    tag, n = min(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    now = expected(n, points)
    bound = "at most about" if n < points[0][0] else "about"  # below the curve's first measured size
    text = f"smallest class {tag!r} has {n} example{'' if n == 1 else 's'}: expect {bound} {now:.0%} accuracy"
    better = next(((m, acc) for m, acc in points if m > n and acc >= now + GAIN), None)
    if better is None:
        text += "; more examples would add little"
    else:
        text += f"; {better[0] - n} more per class ({better[0]} each) should give about {better[1]:.0%}"
    how = " of tags the demo model knows" if from_rows else ", tags trained as new"
    return f"{text} ({family} curve{how}, {source})"
