"""Tags the base already knows start from what it knows (trainer/known.py).

A dataset of only effect tags the demo model was trained beside (reverb, delay, …) is fitted on the demo's
frozen embedding, pulled towards the shipped rows of those classes, instead of training a head from ten
clips' class means over epochs (docs/figure3.md: 0.80 against 0.66 at ten clips a class on unheard
instruments). Any other tag in the dataset, or `known_pull` 0, trains as before."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vibrary.daemon import shards, training  # noqa: E402
from vibrary.daemon.spectrogram import dequantize  # noqa: E402
from vibrary.trainer import known  # noqa: E402
from vibrary.trainer.export import load_base  # noqa: E402
from vibrary.trainer.train import SMALL_CLASS, TrainConfig, split_by_group, train  # noqa: E402

from tests.conftest import json_lines, vibrary  # noqa: E402
from tests.synth import write_kinds  # noqa: E402
from tests.test_trainer import KINDS, P, spectrograms  # noqa: E402

EFFECTS = ["tremolo", "distortion", "reverb"]  # a name for each of the synthetic kinds


def _known(classes: list[str], aliases: dict[str, str], dim: int = 4) -> known.Known:
    n = len(classes)
    families = ["instruments" if c in ("kick", "snare") else "effects" for c in classes]
    return known.Known(classes, families, aliases, np.zeros((n, dim)), np.zeros(n), np.zeros(dim), np.ones(dim))


def test_tags_are_known_by_name_alias_case_separators_and_plural() -> None:
    aliases = {"echo": "delay", "ring mod": "ringmod", "dry": "clean"}
    rows = _known(["clean", "distortion", "ringmod", "delay", "kick", "snare"], aliases)
    assert rows.rows(["Distortion", "Ring-Mods", "echoes", "DRY"]) == [1, 2, 3, 0]
    assert rows.rows(["delay", "distortion"]) == [3, 1] and rows.rows(["snares", "kick"]) == [5, 4]
    assert rows.rows(["distortion", "delay", "fuzz"]) == [1, 3, None]  # fuzz is fitted beside the known two
    assert rows.rows(["distortion", "fuzz", "wah"]) is None  # mostly tags it never heard: trained as new
    assert rows.rows(["clean", "explicit"]) is None  # one known word is no set of effects
    assert rows.rows(["delay", "echo", "dry"]) == [3, None, 0]  # one row cannot start both: echo starts afresh
    assert rows.twins(["delay", "echo", "dry", "fuzz"]) == [("echo", "delay", "delay")]  # (said: merge them)
    assert rows.rows(["kick", "delay"]) is None  # rows of two families were not fitted on one scale
    assert rows.family(["snare", "kick"]) == "instruments" and rows.family(["kick", "delay"]) is None
    assert rows.family(["distortion", "delay", "fuzz"]) == "effects" and rows.family(["fuzz", "wah", "kick"]) is None


def test_the_fit_holds_to_the_rows_as_hard_as_it_is_pulled() -> None:
    """Pulled hard, the rows stay what they were; not pulled, the clips decide. The weights come back in the
    raw embedding's space whatever the mean and spread the pull was measured in."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))
    labels = np.repeat(np.arange(3), 20)
    embedded = torch.from_numpy(centres[labels] + rng.normal(0, 1, (60, 8)) + 5).float()
    y = torch.from_numpy(labels)
    start_w, start_b = torch.from_numpy(rng.normal(0, 1, (3, 8))).float(), torch.zeros(3)
    mean, scale = embedded.mean(0), embedded.std(0)
    _, held_w, held_b = known.fit_head(embedded, y, start_w, start_b, mean, scale, pull=1e7)
    assert torch.allclose(held_w, start_w, atol=1e-3) and torch.allclose(held_b, start_b, atol=1e-2)
    loss, free_w, free_b = known.fit_head(embedded, y, start_w, start_b, mean, scale, pull=1e-3)
    assert ((embedded @ free_w.T + free_b).argmax(1) == y).all() and loss < 0.05
    started_right = float(((embedded @ start_w.T + start_b).argmax(1) == y).float().mean())
    assert started_right < 0.9  # the rows were wrong: the clips are what made them right


def test_a_dataset_of_known_tags_keeps_the_base_body_and_runs_no_epoch() -> None:
    rows = known.load("demo")
    assert rows is not None, "trainer/builtin/demo-known.json must belong to the shipped demo.pt"
    base, name = load_base("demo")
    codes, labels, groups = spectrograms(10, 0)
    manifest = shards.write("fx", EFFECTS, P, codes, labels, groups)[0]
    config = TrainConfig(epochs=3, seed=0)
    result = train(manifest, codes, labels, np.array(groups), config, base, name, known=rows)
    assert result.known == EFFECTS and result.summary()["known"] == EFFECTS
    assert len(result.history) == 1 and result.best_epoch == 1
    state = result.net.state_dict()
    assert base is not None
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith("head."))  # batch norm too
    picked = [rows.classes.index(c) for c in EFFECTS]
    start = torch.from_numpy(rows.weight[picked])
    moved = (state["head.weight"] - start).norm() / start.norm()
    assert 0 < moved < 0.5  # adjusted by the clips, still the known rows
    held = train(manifest, codes, labels, np.array(groups), TrainConfig(seed=0, known_pull=1e9), base, name, known=rows)
    assert torch.allclose(held.net.head.weight, start, atol=1e-4)  # the rows as shipped
    assert result.train_accuracy > held.train_accuracy + 0.1  # the clips taught them what these tags sound like

    partly = ["Tremolos", "dist", "my pads"]  # a tag the base never heard, fitted beside two it knows by alias
    manifest = shards.write("own", partly, P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), config, base, name, known=rows)
    assert result.known == ["Tremolos", "dist"] and len(result.history) == 1  # as the user spelled them
    assert all(torch.equal(result.net.state_dict()[k], v) for k, v in base.items() if not k.startswith("head."))
    pads = labels == 2
    assert (result.net.eval()(torch.from_numpy(dequantize(codes[pads], P))).argmax(1) == 2).float().mean() > 0.8
    mostly_new = [EFFECTS[0], "my pads", "my keys"]  # one known tag of three: trained over epochs, as any dataset
    manifest = shards.write("own", mostly_new, P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), config, base, name, known=rows)
    assert result.known == [] and len(result.history) == 3
    not_pulled = TrainConfig(epochs=3, seed=0, known_pull=0)  # `vibrary train --as-new`
    manifest = shards.write("fx", EFFECTS, P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), not_pulled, base, name, known=rows)
    assert result.known == [] and len(result.history) == 3


def test_a_dataset_too_small_to_hold_clips_out_is_measured_on_folds_held_out_in_turn() -> None:
    """With a tag of under SMALL_CLASS clips none is held out, and `train --json` said the training clips'
    accuracy as `val_accuracy` (1.0 where held-out files scored 0.78): a fit from known rows takes a second,
    so each fold of the clips is held out in turn. Labels that mean nothing read near chance then."""
    rows = known.load("demo")
    base, name = load_base("demo")
    codes, labels, _ = spectrograms(10, 0)
    groups = ["one folder"] * len(labels)  # (a tag from several is held out a folder at a time: below)
    manifest = shards.write("fx", EFFECTS, P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(seed=0), base, name, known=rows)
    assert (result.val_clips, result.folds) == (0, 5) and result.confusion.sum() == len(labels)  # each clip once
    summary = result.summary()
    assert summary["folds"] == 5 and summary["train_accuracy"] == pytest.approx(result.train_accuracy, abs=1e-4)
    assert summary["val_accuracy"] == pytest.approx(np.trace(result.confusion) / len(labels), abs=1e-4)
    noise = np.random.default_rng(0).permutation(labels)  # labels that say nothing of the sound, fitted freely
    loose = TrainConfig(seed=0, known_pull=1e-6)
    shuffled = train(manifest, codes, noise, np.array(groups), loose, base, name, known=rows)
    assert shuffled.folds == 5 and shuffled.val_accuracy < shuffled.train_accuracy - 0.2, shuffled.summary()
    two = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(len(EFFECTS))])  # two folds: said so
    manifest = shards.write("fx", EFFECTS, P, codes[two], labels[two], [groups[i] for i in two])[0]
    pairs = train(manifest, codes[two], labels[two], np.array(groups)[two], TrainConfig(seed=0), base, name, known=rows)
    assert pairs.folds == 2 and pairs.confusion.sum() == len(two), pairs.summary()


def test_a_dataset_large_enough_to_hold_clips_out_is_measured_on_them() -> None:
    rows = known.load("demo")
    base, name = load_base("demo")
    codes, labels, groups = spectrograms(SMALL_CLASS + 5, 0)
    manifest = shards.write("fx", EFFECTS, P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(seed=0), base, name, known=rows)
    assert result.known == EFFECTS and result.val_clips > 0 and result.train_clips + result.val_clips == len(labels)
    summary = result.summary()
    assert "train_accuracy" not in summary and result.history[0]["val_accuracy"] > 0
    assert summary["val_accuracy"] == pytest.approx(result.history[0]["val_accuracy"], abs=1e-4)
    assert result.confusion.sum() == result.val_clips  # the matrix is of the held-out clips
    with torch.no_grad():  # measured without them, the head kept is fitted on every clip
        embedded = result.net.eval().embedding(torch.from_numpy(dequantize(codes, P)))
    indices, y = rows.rows(EFFECTS), torch.from_numpy(labels)
    _, weight, bias = rows.fit(embedded, y, indices, TrainConfig().known_pull)
    assert torch.allclose(result.net.head.weight, weight, atol=1e-4)
    assert torch.allclose(result.net.head.bias, bias, atol=1e-4)
    held = torch.from_numpy(
        split_by_group(labels, np.array(groups), TrainConfig().val_fraction, np.random.default_rng(0))
    )
    _, weight, bias = rows.fit(embedded[~held], y[~held], indices, TrainConfig().known_pull)  # what was measured
    measured = torch.nn.functional.cross_entropy(embedded[held] @ weight.T + bias, y[held])
    assert result.history[0]["val_loss"] == pytest.approx(float(measured), rel=1e-3)
    with torch.no_grad():
        refit = torch.nn.functional.cross_entropy(result.net.head(embedded[held]), y[held])
    assert float(refit) < float(measured) * 0.999  # the head kept has seen those clips: not what is reported


def test_what_a_fit_from_known_rows_did_is_said() -> None:
    known_said = training.known_said
    assert known_said({"known": [], "train_accuracy": 0.9}, ["pads"]) == ""  # trained over epochs: nothing to say
    said = known_said({"known": ["reverb", "delay"], "val_accuracy": 0.9}, ["reverb", "my pads", "delay"])
    assert "already knows these tags (reverb, delay)" in said and "taught it my pads beside them" in said
    assert "no epochs needed" in said and "right on only" not in said
    low = known_said({"known": ["reverb"], "train_accuracy": 0.5}, ["reverb"])
    assert "right on only 50% of your clips it was fitted on: you may mean other sounds" in low and "--as-new" in low
    held_out = known_said({"known": ["reverb"], "val_accuracy": 0.5}, ["reverb"])
    assert "right on only 50% of the clips held out to check it" in held_out
    # folds held out in turn read lower than the training clips the bar was set on: judged on those
    folds = {"known": ["reverb"], "folds": 5, "val_accuracy": 0.6, "train_accuracy": 0.9}
    assert "right on only" not in known_said(folds, ["reverb"])


def test_rows_fitted_on_another_demo_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A retrained demo.pt beside rows of the old one: their logits would read another embedding."""
    demo = known.base_path("demo")
    assert demo is not None and len(KINDS) == len(EFFECTS)
    raw = json.loads(known.FILE.read_text())
    assert raw["base"] == hashlib.sha256(demo.read_bytes()).hexdigest()
    copy = tmp_path / "demo-known.json"
    shutil.copy(known.FILE, copy)
    monkeypatch.setattr(known, "FILE", copy)
    assert known.load("demo") is not None
    copy.write_text(json.dumps(raw | {"base": "0" * 64}))
    with caplog.at_level(logging.WARNING, logger="vibrary.trainer.known"):
        assert known.load("demo") is None and known.load("demo") is None
    assert caplog.text.count("fitted on another demo.pt") == 1  # once, not at every dataset edit
    damaged = {
        "cut short": json.dumps(raw)[:-100],
        "a row short": json.dumps(raw | {"bias": raw["bias"][:-1]}),
        "an alias of nothing": json.dumps(raw | {"aliases": {"fuzz": "fuzzbox"}}),
        "a scale of 0": json.dumps(raw | {"scale": [0.0] * len(raw["scale"])}),
    }
    for what, text in damaged.items():
        copy.write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vibrary.trainer.known"):
            assert known.load("demo") is None, what  # the training goes on as it did before known rows
        assert "cannot be read" in caplog.text, what


def test_an_epoch_saved_by_a_training_as_new_is_not_taken_up_by_a_fit(tmp_path: Path) -> None:
    """A cut training of the tags as new (known rows missing then, or --as-new) left its epoch: the fit of the
    same dataset now does not resume it (it replaced the fitted head and said it was fitted)."""
    rows = known.load("demo")
    base, name = load_base("demo")
    assert rows is not None and base is not None
    codes, labels, groups = spectrograms(10, 0)
    manifest = shards.write("fx", EFFECTS, P, codes, labels, groups)[0]
    saved = tmp_path / "checkpoint.pt"
    config = TrainConfig(epochs=2, seed=0)
    train(manifest, codes, labels, np.array(groups), config, base, name, checkpoint=saved)  # as new: 2 epochs
    assert saved.exists()
    fitted = train(manifest, codes, labels, np.array(groups), config, base, name, checkpoint=saved, known=rows)
    assert fitted.resumed_from_epoch == 0 and fitted.known == EFFECTS and len(fitted.history) == 1
    state = fitted.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith("head."))


def test_vibrary_train_fits_known_tags_says_so_and_trains_them_as_new_when_asked(
    model_home: Path, tmp_path: Path
) -> None:
    """Through the CLI and its local trainer: a dataset of folders named as effects the demo knows."""
    named = dict(zip(KINDS, EFFECTS, strict=True))
    write_kinds(tmp_path / "examples", per_kind=8, seed=1, folders=named, names=named)
    vibrary("dataset", "create", "fx", str(tmp_path / "examples"), home=model_home)
    fitted = vibrary("train", "fx", home=model_home)
    assert "the base model already knows these tags" in fitted.stdout and "--as-new" in fitted.stdout
    assert "stopped early" not in fitted.stdout  # one fit of a 20-epoch budget is not a training cut short
    assert "fitted the tags the base model knows: loss" in fitted.stderr  # not "epoch 1/1" of a 20-epoch budget
    assert "epoch " not in fitted.stderr and "loss 0.000" not in fitted.stderr  # nor "loss 0.000" before it
    assert "was not used" not in fitted.stdout  # (no --epochs given)
    asked = vibrary("train", "fx", "--epochs", "3", "--name", "fx3", home=model_home).stdout  # fitted: unheeded, said
    assert "already knows these tags" in asked and "--epochs 3 was not used: a fit runs no epochs" in asked, asked
    as_new = json_lines(vibrary("train", "fx", "--json", "--as-new", "--epochs", "2", home=model_home).stdout)[-1]
    assert as_new["summary"]["known"] == [] and as_new["summary"]["epochs_run"] == 2
    # new tags, too few clips to hold any out: the folds' figure is the dataset's, said as what to expect, not
    # as a "validation accuracy" of this version (two versions of other epochs or seeds said the same 77.8 %)
    assert as_new["summary"]["folds_stand_in"] and "alike for any epochs or seed" in as_new["accuracy_of"]
    said = vibrary("train", "fx", "--as-new", "--epochs", "1", "--name", "fx1", home=model_home).stdout
    assert re.search(r"installed and activated fx1@1: \d+% right on your own clips held out in turn", said), said
    assert "validation accuracy" not in said
    # each version's figure listed beside it: which to go back to was told by its date alone
    listed = {m["model"]: m for m in json_lines(vibrary("models", "list", "--json", home=model_home).stdout)}
    right = int(re.search(r"(\d+)% right", said)[1])  # type: ignore[index]
    assert round(100 * listed["fx1"]["accuracy"]) == right and listed["fx1"]["train_clips"] == 8 * len(EFFECTS)
    assert "accuracy" not in listed["demo"]  # (its figures are docs/demo-model.md's)
    human = vibrary("models", "list", home=model_home).stdout
    assert f"trained on {8 * len(EFFECTS)} clips, {right}% right on clips held out in turn; tags:" in human, human
    again = json_lines(vibrary("train", "fx", "--json", home=model_home).stdout)[-1]
    assert sorted(again["summary"]["known"]) == sorted(EFFECTS) and again["summary"]["epochs_run"] == 1
    assert sorted(again["classes"]) == sorted(EFFECTS)


def test_the_known_rows_script_fits_rows_a_base_beside_it_takes(tmp_path: Path) -> None:
    """scripts/fit_known.py, which scripts/train_demo.py now runs after a retrain (a second command, it was
    forgotten): rows fitted on a checkpoint are written beside it, name it, and are the rows it loads."""
    import importlib.util
    import sys

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))  # (fit_known imports train_demo, as the scripts run from there)
    try:
        spec = importlib.util.spec_from_file_location("fit_known", scripts / "fit_known.py")
        assert spec and spec.loader
        fit_known = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fit_known)
        demo = known.base_path("demo")
        assert demo is not None
        base = tmp_path / "demo.pt"
        shutil.copy(demo, base)
        classes = sorted(set(fit_known.ALIASES.values()))
        rng = np.random.default_rng(0)
        codes = rng.integers(0, 256, (4 * len(classes), *P.shape), dtype=np.uint8)
        np.savez(tmp_path / "effects.npz", codes=codes, labels=np.arange(len(codes)) % len(classes), classes=classes)
        said = fit_known.fit(tmp_path / "effects.npz", str(base), instruments=True)
    finally:
        sys.path.remove(str(scripts))
    assert said.startswith(f"{tmp_path / 'demo-known.json'}: {len(classes) + 15} classes, {len(codes)} clips")
    rows = known.load(str(base))
    assert (
        rows is not None
        and rows.family(["reverb", "delay"]) == "effects"
        and rows.family(["bd", "snare"]) == "instruments"
    )


def test_new_tags_too_few_to_hold_out_are_measured_on_folds_by_a_quick_fit() -> None:
    """New tags with under SMALL_CLASS clips trained over epochs on every clip, and `train --json` said their
    accuracy on those clips (1.0 of any pack) as `val_accuracy`. Their folds are scored in turn by a head on the
    base's embedding of the others, said as such: labels that mean nothing read near chance then."""
    rows = known.load("demo")
    base, name = load_base("demo")
    codes, labels, _ = spectrograms(10, 0)
    groups = ["one folder"] * len(labels)
    manifest = shards.write("own", [f"mine {i}" for i in range(len(EFFECTS))], P, codes, labels, groups)[0]
    config = TrainConfig(epochs=2, seed=0)
    result = train(manifest, codes, labels, np.array(groups), config, base, name, known=rows)
    assert result.known == [] and len(result.history) == 2 and result.folds == 5 and result.folds_stand_in
    summary = result.summary()  # not "folds": a daemon from before it said them as the model's own folds
    assert summary["folds_stand_in"] == 5 and "folds" not in summary and result.confusion.sum() == len(labels)
    noise = np.random.default_rng(0).permutation(labels)
    shuffled = train(manifest, codes, noise, np.array(groups), config, base, name, known=rows)
    assert result.val_accuracy > 0.8 and shuffled.val_accuracy < 0.5, (result.summary(), shuffled.summary())


def test_folds_hold_out_whole_folders_of_a_tag_that_has_several() -> None:
    """Clips of one folder are alike: a fold checked beside its folder's other clips read 10-20 points higher
    than files of another pack. A tag from several folders (--labels suggest) holds out each folder whole."""
    from vibrary.trainer import train as train_module

    labels = torch.tensor([0] * 20 + [1] * 10)
    sources = np.array([7] * 10 + [9] * 10 + [3] * 10)  # tag 0 from two folders, tag 1 from one
    embedded = torch.eye(len(labels), 128)  # each clip its own row: which ones a fit saw, read back
    seen: list[set[int]] = []

    class Fit:
        def fit(self, e: Any, y: Any, rows: object, pull: float) -> tuple[float, Any, Any]:
            seen.append(set(e.argmax(1).tolist()))
            return 0.0, torch.zeros(2, 128), torch.zeros(2)

    fit: Any = Fit()  # (only its fit is called)
    _, folds = train_module._folds_held_out(fit, embedded, labels, sources, [None, None], 0.0, lambda: False)
    left_out = [set(range(30)) - s for s in seen]
    assert folds == 5 and [{i for i in out if i < 20} for out in left_out][:2] == [set(range(10)), set(range(10, 20))]
    assert all(len(out & set(range(20, 30))) == 2 for out in left_out)  # one folder: runs of it, as before
