"""How many examples do I need? Expected accuracy at a dataset's size, read off a measured curve.

`builtin/examples_curve.json` holds test accuracy against examples per class for an instrument set and
an effects set, each as the demo's classes train (from its rows of them, vibrary.trainer.known), with half
of them renamed so that it does not know them, and as new tags train (`{"instruments": {"10": 0.68, ...},
"instruments half known": ..., "instruments as new": ..., "effects": ..., "source": "..."}`), as
`docs/figure3` measures them. The smallest class limits a model most, so advice is about that class;
between measured sizes accuracy is interpolated on a log scale of the size, as such curves are drawn. A
dataset is read off the curve of the family and the way it will train; one of tags the demo does not know
(moods, a mix of families) off the instruments curve as new.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

from vibrary.trainer import known

from . import config
from .shards import too_few

CURVE = Path(__file__).parent / "builtin" / "examples_curve.json"
GAIN = 0.05  # more examples are worth suggesting when they buy at least this much accuracy where it was measured
MORE = "examples of every tag"  # (said when more would help: the CLI then says how to add them)


def load_curve(*curves: str, path: Path = CURVE) -> tuple[list[tuple[int, float]], str]:
    """The first of these curves the file has (then instruments as new, instruments). `instruments` or
    `effects`: as such tags train, from the rows the demo has of them; ` half known`: with every second tag
    one it does not know; ` as new`: as tags it does not know, or `--as-new`, train."""
    raw = json.loads(path.read_text())
    found = next(raw[key] for key in (*curves, "instruments as new", "instruments") if key in raw)
    points = sorted((int(n), float(acc)) for n, acc in found.items())
    return points, str(raw.get("source", ""))


def expected(n: int, points: list[tuple[int, float]]) -> float:
    """Accuracy at n examples per class; clamped to the curve's ends."""
    if n <= points[0][0]:
        return points[0][1]
    for (n0, a0), (n1, a1) in itertools.pairwise(points):
        if n <= n1:
            return a0 + (a1 - a0) * (math.log(n) - math.log(n0)) / (math.log(n1) - math.log(n0))
    return points[-1][1]


def rescaled(accuracy: float, measured: int, tags: int) -> float:
    """An accuracy measured with `measured` tags, for `tags` of them: the same share of the way from chance
    (1 in so many) to every clip right. A rough rule (tags are not all alike to tell apart), but one that
    says more than the measured figure itself, which for 2 tags was near chance."""
    chance, chance_then = 1 / tags, 1 / measured
    return chance + (1 - chance) * max(0.0, (accuracy - chance_then) / (1 - chance_then))


def _between(family: str, share: float, path: Path) -> tuple[list[tuple[int, float]], str]:
    """The curve of a dataset with this share of its tags known (MOST, half, up to all), drawn between the
    curves measured with half and with all of them known, by the share: read off the half-known curve
    whatever the share, 9 effects known of 12 were advised 0.75 at ten clips a class, and measured 0.77
    (docs/figure3.md, "Stop 29"); halfway between the two is 0.775."""
    (half, source), (whole, _) = load_curve(f"{family} half known", path=path), load_curve(family, path=path)
    weight = min(1.0, max(0.0, (share - known.MOST) / (1 - known.MOST)))
    return [(n, (1 - weight) * acc + weight * expected(n, whole)) for n, acc in half], source


def _new_tags_gain(
    per_class: Mapping[str, int], picked: list[int | None], family: str, path: Path, said: Callable[[float], float]
) -> str:
    """What more examples of the tags the demo does not know would buy, off the curve of new tags: the curve of a
    mix is flat where the known tags carry it, and "more examples would add little" was said of a new tag of 2."""
    fresh = {t: c for (t, c), row in zip(per_class.items(), picked, strict=True) if row is None}
    tag, n = min(fresh.items(), key=lambda kv: (kv[1], kv[0]))
    points, _ = load_curve(f"{family} as new", path=path)
    better = next(((m, acc) for m, acc in points if m > n and acc >= expected(n, points) + GAIN), None)
    if better is None:
        return "; more examples would add little"
    return (
        f"; but {tag!r} is new to the demo model, and new tags gain from examples: {better[0] - n} more of it should"
        f" help (tags trained as new: about {said(expected(n, points)):.0%} at {n} a tag, {said(better[1]):.0%} at"
        f" {better[0]})"
    )


def advise(
    per_class: Mapping[str, int],
    path: Path = CURVE,
    base: str = "demo",
    pull: float | None = None,
    dataset: str = "NAME",
) -> str:
    """One or two sentences for people: what to expect now, and what more examples would buy, off the curve
    of the family the tags train from (instruments for tags the demo does not know), as they will train
    (vibrary.trainer.known.starts_from): from the rows the base has of them, or as new tags (`pull` 0:
    `--as-new`; `base` "none": every tag, on the family's curve as new)."""
    if not per_class:
        return ""
    if why := too_few(dict(per_class)):  # said at `dataset show` and after each edit, not after an upload
        return f"cannot train yet: {why} (`vibrary dataset add` more, or relabel or drop them)"
    tags, rows = list(per_class), known.load("demo" if base == "none" else base)
    picked = known.starts_from(rows if base != "none" else None, tags, pull)
    family = (rows.family(tags) if rows is not None else None) or "instruments"
    knows = len(tags) - picked.count(None) if picked is not None else 0
    # said for people, not as the figure's names ("instruments curve, tags trained as new; … rescaled by chance
    # level": a producer's walkthrough)
    if knows == len(tags):
        (points, source), how = load_curve(family, path=path), " the demo model knows"
    elif knows:
        points, source = _between(family, knows / len(tags), path)
        how = f", between all and half of them known to the demo model (it knows {knows} of your {len(tags)} tags)"
    else:
        (points, source), how = load_curve(f"{family} as new", path=path), " trained as new tags"
    measured = json.loads(path.read_text()).get("classes", {}).get(family)

    def said(acc: float) -> float:  # 69 % of 9 instruments was said of 2 tags, where chance is 50 %
        return rescaled(acc, measured, len(tags)) if measured and measured != len(tags) else acc

    tag, n = min(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    now = expected(n, points)
    bound = "at most about" if n < points[0][0] else "about"  # below the curve's first measured size
    text = (
        f"your smallest tag, {tag!r}, has {n} example{'' if n == 1 else 's'}: expect {bound} {said(now):.0%} accuracy"
    )
    # (a gain is judged on the curve as measured: rescaled for 2 tags, every gain read as half as much)
    better = next(((m, acc) for m, acc in points if m > n and acc >= now + GAIN), None)
    if better is None and picked is not None and 0 < knows < len(tags):
        text += _new_tags_gain(per_class, picked, family, path, said)
    elif better is None:
        text += "; more examples would add little"
    else:  # what each tag below that size lacks: "8 more per class" was said of tags that had 8 already
        short = sorted(((t, better[0] - c) for t, c in per_class.items() if c < better[0]), key=lambda tc: -tc[1])
        lacks = ", ".join(f"{more} more of {t!r}" for t, more in short[:3]) + (", …" if len(short) > 3 else "")
        text += f"; {better[0]} {MORE} ({lacks}) should give about {said(better[1]):.0%}"
    # a test of 12 effects read for 2 tags says less: said, with the tags it was measured with
    tags_said = f", scaled to your {len(tags)} tags" if measured and measured != len(tags) else ""
    text = f"{text} (from Vibrary's own test of {measured or 'several'} {family}{how}{tags_said}; {source})"
    for tag, other, what in rows.twins(tags) if rows is not None and picked is not None else []:  # dry/, clean/
        into, merged = (tag, other) if config.tag_key(tag) == what else (other, tag)  # the demo's own name
        text += (
            f"\n{tag!r} and {other!r} are one tag to the demo model ({what}): as two, {tag!r} trains as a new one;"
            f" `vibrary dataset merge {shlex.quote(dataset)} {shlex.quote(merged)} --into {shlex.quote(into)}`"
            " makes them one"
        )
    return text
