"""Train a TagNet on a dataset of spectrogram shards: the user's CPU by default, CUDA when present.

Validation holds out whole groups (source folders) where a class has more than one small enough to spare
(else a random share of its clips, split_by_group), because a model that only recognises clips from folders
it has seen is not what a producer needs. Training stops early when
validation accuracy stops improving, and the best epoch's weights are kept. A dataset with a class of
fewer than SMALL_CLASS clips has no validation split: every clip trains for the whole epoch budget, and
the last epoch's weights, where the learning-rate schedule ends, are kept. With a base (transfer) the new
head starts as the nearest class mean of the base's embeddings and the body learns at body_lr × lr (0.05:
a pretrained body needs only nudging; docs/figure3.md measures the full rate against it), unless half the tags
or more are ones the base already knows: then the head is fitted from what it knows, with no epoch (trainer/known.py).
Everything random is drawn from the seed, so the same dataset and config give the same model on the same device.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from vibrary.daemon.shards import Manifest, ShardError, too_few
from vibrary.daemon.spectrogram import SpectrogramParams, dequantize, mel_filterbank

from . import checkpoint as snapshot
from .augment import LoFi, augment, mixup
from .known import Known, starts_from
from .network import TagNet
from .options import FITTING, PRECISIONS, Cancelled, TrainConfig

MIN_STEPS, MIN_BATCH = 3, 8  # optimiser steps an epoch at least, by smaller batches (see train)
SMALL_CLASS = 25  # fewer clips than this in some class: no validation split (see train); measured at 1–20


def epoch_score(val_accuracy: float, val_loss: float) -> float:
    """What early stopping keeps the best of: validation accuracy, ties broken by validation loss. With a
    few clips a class, accuracy moves in coarse steps and ties often, and counting a tie as no progress
    stopped transfer runs near the schedule's peak rate, while the loss was still falling."""
    return val_accuracy - 1e-6 * min(val_loss, 99.0)  # under any accuracy step of up to 10,000 clips


@dataclass
class AuxTask:
    """A second labelled set that trains a head of its own on the same body, in the same steps. The demo
    model learns audio effects beside its instruments this way (scripts/build_effects_corpus.py), so that
    transfer learning starts from a body that keeps what effects change; that head is never exported."""

    codes: np.ndarray
    labels: np.ndarray
    classes: list[str]
    share: float = 0.5  # aux clips per step, as a share of the step's own clips
    masks: bool = False  # SpecAugment's silent stripes would read as tremolo or gating


@dataclass
class Progress:
    phase: str  # loading | fitting (known rows: trainer/known.py) | training | exporting | done
    epoch: int = 0
    epochs: int = 0
    loss: float = 0.0
    val_accuracy: float = 0.0
    eta_s: float = 0.0
    resumed_from_epoch: int = 0  # TrainResult's, said all along: a front end that comes in late hears it too


@dataclass
class TrainResult:
    net: TagNet
    classes: list[str]
    params: SpectrogramParams
    history: list[dict[str, float]] = field(default_factory=list)
    # of the held-out clips (or folds of them held out in turn); of the training clips when none was held out
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    val_accuracy: float = 0.0
    train_accuracy: float = 0.0  # on the training clips, as the model kept is (no augmentation)
    best_epoch: int = 0
    resumed_from_epoch: int = 0  # the epoch a cut-off training went on from (trainer/checkpoint.py); 0: never cut
    seconds: float = 0.0
    train_clips: int = 0
    val_clips: int = 0
    base: str = "none"
    device: str = "cpu"
    centroids: np.ndarray | None = None  # (classes, EMBED), unit length: see familiarity()
    familiar_from: float = -1.0  # the familiarity a clip needs to be one of the classes
    known: list[str] = field(default_factory=list)  # the tags fitted from what the base knows of them (known.py)
    folds: int = 0  # with no clip held out, the folds of them held out in turn, each scored by a fit on the others
    # ... on the base's embedding, standing in for a training of new tags over epochs (not a fit from known rows,
    # which is the model itself): said as `folds_stand_in`, which a daemon from before it does not take for folds
    folds_stand_in: bool = False

    def summary(self) -> dict[str, object]:
        """What the training measured: the accuracy on held-out clips (or folds of them held out in turn), or on
        the training clips when none was held out; never the other as a 0.0 that reads as a model always wrong."""
        measured = {"val_accuracy": self.val_accuracy} if self.val_clips else {"train_accuracy": self.train_accuracy}
        if self.folds:  # both (a daemon from before folds reads train_accuracy, and known_said judges by it)
            measured = {"val_accuracy": self.val_accuracy, "train_accuracy": self.train_accuracy}
        return {
            **({"folds_stand_in" if self.folds_stand_in else "folds": self.folds} if self.folds else {}),
            **{k: round(v, 4) for k, v in measured.items()},
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "resumed_from_epoch": self.resumed_from_epoch,
            "seconds": round(self.seconds, 1),
            "train_clips": self.train_clips,
            "val_clips": self.val_clips,
            "base": self.base,
            "device": self.device,
            "known": self.known,
        }


def pick_device(name: str) -> torch.device:
    """ValueError for a GPU this machine does not have (a job asked for cuda failed at its first batch)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:  # (`cuda:00`, which the options' pattern lets by)
        raise ValueError(f"device {name!r}: {e}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        have = f"{torch.cuda.device_count()} CUDA GPUs" if torch.cuda.is_available() else "no CUDA GPU"
        raise ValueError(f"device {name!r}: this trainer has {have}; ask for auto or cpu")
    return device


def mixed_precision(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """The context of a training step's forward pass. bfloat16 autocast where the hardware has it (CUDA,
    CPUs with AMX or AVX-512 BF16) trains this network about twice as fast on such a CPU
    (benchmarks/bench_trainer.py); elsewhere it would be emulated and slower than float32, so "auto" keeps
    float32 there. Weights, optimiser state and gradients stay float32, and batch-norm statistics,
    evaluation and export run in float32: what the daemon will compute."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}")
    if precision == "float32" or (precision == "auto" and not native_bfloat16(device)):
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def native_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities: dict[str, object] = getattr(torch.cpu, "get_capabilities", dict)()
    return device.type == "cpu" and bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def split_by_group(labels: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation clips. Whole groups go to validation, smallest first, as long as they
    fit twice the wanted share and every class keeps training data; a class whose groups are all too
    big (or that has only one) gives a random share of its clips instead."""
    val = np.zeros(len(labels), bool)
    if fraction <= 0:
        return val
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        class_groups = rng.permutation(np.unique(groups[members]))
        want = max(1, round(fraction * len(members)))
        if len(class_groups) >= 2:
            sizes = {g: int((groups[members] == g).sum()) for g in class_groups}
            for g in sorted(class_groups, key=lambda g: sizes[g]):
                taken = int(val[members].sum())
                if taken + sizes[g] > min(2 * want, len(members) - 1):
                    continue  # too big a bite, or the class's last training clips
                val[members[groups[members] == g]] = True
                if taken + sizes[g] >= want:
                    break
        if not val[members].any():
            val[rng.permutation(members)[: min(want, len(members) - 1)]] = True
    return val


def check_counts(labels: np.ndarray, classes: list[str]) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    if why := too_few({tag: int(n) for tag, n in zip(classes, counts, strict=True)}):
        raise ShardError(why)


def train(
    manifest: Manifest,
    codes: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    base: dict[str, torch.Tensor] | None = None,
    base_name: str = "none",
    progress: Callable[[Progress], None] = lambda p: None,
    cancelled: Callable[[], bool] = lambda: False,
    aux: AuxTask | None = None,
    checkpoint: Path | None = None,
    known: Known | None = None,
) -> TrainResult:
    """With `checkpoint`, every finished epoch is saved there and a training found there goes on from it
    (trainer/checkpoint.py); the file is left for the caller to remove once the result is safe. With
    `known` (the base's rows of tags it knows), a dataset of half or more such tags is fitted on the base's frozen
    embedding instead, and no epoch runs (trainer/known.py)."""
    started = time.monotonic()
    check_counts(labels, manifest.classes)
    params = manifest.params
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = pick_device(config.device)

    # A class under SMALL_CLASS clips would lend validation 1–3 of them: early stopping on that noise ended
    # transfer runs after 5–10 epochs, and the clips were lost to training. Such datasets train on every
    # clip for the whole epoch budget (docs/figure3.md: +4.6 points on instruments, +6.9 on effects at 10/class).
    small = np.bincount(labels, minlength=len(manifest.classes)).min() < SMALL_CLASS
    val_mask = split_by_group(labels, groups, 0.0 if small else config.val_fraction, rng)
    x_all = torch.from_numpy(codes)
    y_all = torch.from_numpy(labels)
    train_idx, val_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    if math.ceil(len(train_idx) / config.batch_size) < MIN_STEPS:  # 24 clips: 1 step an epoch left tones as thumps
        config = replace(config, batch_size=max(MIN_BATCH, math.ceil(len(train_idx) / MIN_STEPS)))

    net = TagNet(
        len(manifest.classes), params.channels, params.n_mels, params.top_db, config.dropout, config.head_dropout
    )
    if base is not None:
        _load_base(net, base)
    aux_head = torch.nn.Linear(net.head.in_features, len(aux.classes)) if aux is not None else None
    # channels-last: oneDNN's fast convolution kernels on the CPU (torch's stub lacks the keyword)
    net.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    amp = mixed_precision(device, config.precision)
    head_params = list(net.head.parameters())
    if aux_head is not None:
        aux_head.to(device)
        head_params += list(aux_head.parameters())
    body_params = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    body_lr = config.lr * (config.body_lr if base is not None else 1.0)  # a pretrained body needs only nudging
    optimizer = torch.optim.AdamW(
        [{"params": body_params, "lr": body_lr}, {"params": head_params, "lr": config.lr}],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(len(train_idx) / config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if total_steps >= 10:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[body_lr, config.lr], total_steps=total_steps, pct_start=0.2
        )
    else:  # one-cycle needs room to warm up and wind down (it divides by zero at 5 steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def batch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pass (training, batch-norm statistics, evaluation) asks for its clips here, so a cancel or
        a suspension (trainer/service.py) is heard within one batch, whatever the phase."""
        if cancelled():
            raise Cancelled("training cancelled")
        x = torch.from_numpy(dequantize(x_all[idx].numpy(), params)).to(device)
        return x, y_all[idx].to(device)

    lofi = LoFi(mel_filterbank(params), params.sample_rate) if config.lofi else None

    def prepared(x: torch.Tensor, y: torch.Tensor, n: int, masks: bool, own: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented inputs and smoothed (mixed) one-hot targets. `own`: the dataset's clips, not an auxiliary
        task's (lo-fi copies of effects would be bitcrush, their labels wrong)."""
        targets = F.one_hot(y, n).float()
        if config.augment:
            if lofi is not None and own:
                x = lofi(x, -params.top_db, config.lofi, gen)
            x = augment(x, -params.top_db, gen, masks)
            x, targets = mixup(x, targets, config.mixup_alpha, gen)
        return x, targets * (1 - config.label_smoothing) + config.label_smoothing / n

    def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()

    result = TrainResult(
        net,
        list(manifest.classes),
        params,
        base=base_name,
        device=str(device),
        train_clips=len(train_idx),
        val_clips=len(val_idx),
    )
    rows = starts_from(known if base is not None else None, manifest.classes, config.known_pull)
    epochs = config.epochs if rows is None else 0
    if rows is not None and known is not None:
        result.known = [tag for tag, i in zip(manifest.classes, rows, strict=True) if i is not None]
        progress(Progress(FITTING, 0, 1))  # a pass over every clip comes first (no epoch: "epoch 1/1" was said)
        split = (train_idx, val_idx)
        _fit_known(net, result, known, rows, config.known_pull, split, groups, batch, config.batch_size, cancelled)
        progress(Progress(FITTING, 1, 1, result.history[0]["train_loss"], result.history[0]["val_accuracy"]))
    elif base is not None:
        if not len(val_idx) and known is not None:  # new tags, too few clips to hold any out: folds of them
            # are scored in turn by a head on the base's embedding of the others, as the base is (its batch norm
            # too, which its known rows were fitted on): seconds, where five trainings over epochs would take
            # minutes; `train --json` said the training clips' accuracy, 1.0 of any pack
            embedded, y = _embedded(net, train_idx, batch, config.batch_size)
            n = len(manifest.classes)
            held, result.folds = _folds_held_out(
                known, embedded, y, groups[train_idx], [None] * n, config.known_pull, cancelled
            )
            _, result.val_accuracy, result.confusion = _scored(held, n)
            result.folds_stand_in = True
        order = rng.permutation(train_idx)
        _imprint(net, order, labels, batch, n_classes=len(manifest.classes), batch_size=config.batch_size)
    best_state, best_acc, since_best = copy.deepcopy(net.state_dict()), -math.inf, 0  # scores can be < -1
    n_classes = len(manifest.classes)
    key = ""  # hashing every clip costs a pass over the dataset: only for a training that checkpoints
    if rows is not None:  # no epoch to save or resume: an epoch saved by a training of them as new is not this
        checkpoint = None
    if checkpoint is not None:
        aux_arrays = (aux.codes, aux.labels, np.array([aux.share, aux.masks])) if aux else ()
        # the network's layout too: a snapshot from before an upgrade that changed it starts over, not fails
        layout = " ".join(f"{k}{tuple(v.shape)}" for k, v in net.state_dict().items())
        key = snapshot.fingerprint(config, f"{base_name} {params} {layout}", codes, labels, groups, *aux_arrays)
    modules = {"net": net, "aux_head": aux_head, "optimizer": optimizer, "scheduler": scheduler}
    first, spent = 1, 0.0  # the epoch to start from; seconds trained before a resume
    resumed = snapshot.load(checkpoint, key)
    if resumed is not None:
        snapshot.restore(resumed, modules, rng, gen)
        best_state, best_acc, since_best = resumed["best_state"], resumed["best_acc"], resumed["since_best"]
        result.best_epoch, result.history = resumed["best_epoch"], resumed["history"]
        result.resumed_from_epoch, spent = resumed["epoch"], resumed["seconds"]
        first = result.resumed_from_epoch + 1
        last = result.history[-1] if result.history else {}  # where it stands, before an epoch's wait
        last_loss, last_accuracy = last.get("train_loss", 0.0), last.get("val_accuracy", 0.0)
        progress(Progress("training", first - 1, config.epochs, last_loss, last_accuracy, resumed_from_epoch=first - 1))
    for epoch in range(first, epochs + 1):
        if len(val_idx) and since_best >= config.patience:  # without validation, nothing says when to stop
            break
        epoch_start = time.monotonic()
        net.train()
        order = rng.permutation(train_idx)
        total = 0.0
        # as many steps as whole batches would take, of sizes within one of each other: 65 clips at 32 were
        # 32, 32 and one clip, mixed up with itself and stepped on as if it were a batch
        for part in np.array_split(order, steps_per_epoch):
            x, y = batch(part)
            x, targets = prepared(x, y, n_classes, config.masks, own=True)
            if aux is None or aux_head is None:
                with amp():
                    logits = net(x)
                loss = soft_ce(logits.float(), targets)
            else:  # one pass through the body for both sets: batch norm sees what it will be fed
                pick = rng.integers(0, len(aux.labels), max(2, round(len(part) * aux.share)))
                xa = torch.from_numpy(dequantize(aux.codes[pick], params)).to(device)
                xa, ta = prepared(
                    xa, torch.from_numpy(aux.labels[pick]).long().to(device), len(aux.classes), aux.masks, own=False
                )
                with amp():
                    emb = net.embedding(torch.cat([x, xa]))
                    logits, aux_logits = net.head(emb[: len(x)]), aux_head(emb[len(x) :])
                loss = soft_ce(logits.float(), targets) + soft_ce(aux_logits.float(), ta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
        train_loss = total / max(1, len(train_idx))
        if not math.isfinite(train_loss):  # no later epoch mends it (nor did the last one: "the familiarity
            # bar is nan, not a similarity" failed the export), and a first one's weights kept were the untrained start
            raise ValueError(
                f"training diverged in epoch {epoch} (its loss is {train_loss}): train again with a lower learning"
                f" rate (the lr option, {config.lr:g} now) or another seed"
            )
        if len(val_idx):  # evaluation needs them; without it, only the weights kept do (after the loop)
            _recalibrate_batch_norm(net, order, batch, config.batch_size)  # a shuffled sample of every class
        val_loss, val_acc, _ = _evaluate(net, val_idx, batch, n_classes, config.batch_size)
        score = epoch_score(val_acc, val_loss) if len(val_idx) else epoch  # the schedule's end: its weights
        if score > best_acc:
            best_state, best_acc, since_best, result.best_epoch = copy.deepcopy(net.state_dict()), score, 0, epoch
        else:
            since_best += 1
        result.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.monotonic() - epoch_start,
            }
        )
        if checkpoint is not None:
            snapshot.save(
                checkpoint,
                snapshot.capture(modules, rng, gen)
                | {
                    "key": key,
                    "epoch": epoch,
                    "seconds": spent + time.monotonic() - started,
                    "best_state": best_state,
                    "best_acc": best_acc,
                    "since_best": since_best,
                    "best_epoch": result.best_epoch,
                    "history": result.history,
                },
            )
        eta = (time.monotonic() - started) / (epoch - first + 1) * (config.epochs - epoch)
        progress(Progress("training", epoch, config.epochs, train_loss, val_acc, eta, result.resumed_from_epoch))
    net.load_state_dict(best_state)
    # once, for the weights kept (a fifth of a large training's time when done every epoch); never under known rows
    if not len(val_idx) and rows is None:
        _recalibrate_batch_norm(
            net, np.random.default_rng(config.seed).permutation(train_idx), batch, config.batch_size
        )
    if rows is None and not result.folds:  # a fit from known rows (or folds) was measured before
        _, result.val_accuracy, result.confusion = _evaluate(net, val_idx, batch, n_classes, config.batch_size)
    if not len(val_idx):  # all there is to say of a model nothing was held out from, said as what it is
        _, result.train_accuracy, confusion = _evaluate(net, train_idx, batch, n_classes, config.batch_size)
        if not result.folds:  # (folds held out in turn: their matrix is what was measured)
            result.confusion = confusion
    labelled = np.random.default_rng(config.seed).permutation(np.concatenate([train_idx, val_idx]))
    result.centroids, result.familiar_from = familiarity(net, labelled, labels, batch, n_classes, config.batch_size)
    result.seconds = spent + time.monotonic() - started
    net.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return result


# The share of a model's own examples it may find unfamiliar. The least typical of them sets the bar: a file
# less like any class than that is none of them (docs/familiarity.md: with 10 examples a tag, 89-99 % of the
# tags' files kept and 27-97 % of other classes' files turned away, on sources never trained on; at 5 %, 83-97
# kept and 60-98 turned away).
UNFAMILIAR_EXAMPLES = 0.01
FAMILIARITY_CLIPS = 256  # clips a class that its centroid and the bar are measured on: a big class needs no more


def familiarity(
    net: TagNet,
    idx: np.ndarray,
    labels: np.ndarray,
    batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    n_classes: int,
    batch_size: int,
) -> tuple[np.ndarray, float]:
    """Each class's centroid (the mean direction of its clips' embeddings) and the familiarity a file needs
    to be one of the classes: that of the least typical labelled clips (UNFAMILIAR_EXAMPLES), each measured
    against its own class's centroid without itself; with itself in it, every clip of a ten-clip class
    would look close to a centre it pulled towards itself. A class of one clip has no centroid without it:
    that clip is measured with itself (as 1.0), or it alone would set the bar at its distance from the
    others. Up to FAMILIARITY_CLIPS of each class's clips, in the (shuffled) order of `idx`."""
    picked = np.concatenate([idx[labels[idx] == c][:FAMILIARITY_CLIPS] for c in range(n_classes)])
    e, y = _embedded(net, picked, batch, batch_size)
    e = F.normalize(e.double(), dim=1)
    sums = torch.zeros(n_classes, e.shape[1], dtype=e.dtype).index_add_(0, y, e)
    similarity = e @ F.normalize(sums, dim=1).T
    alone = (torch.bincount(y, minlength=n_classes) == 1)[y]
    without_itself = F.normalize(torch.where(alone[:, None], e, sums[y] - e), dim=1)
    similarity[torch.arange(len(y)), y] = (e * without_itself).sum(dim=1)
    bar = float(torch.quantile(similarity.amax(dim=1), UNFAMILIAR_EXAMPLES))
    return F.normalize(sums, dim=1).float().numpy(), bar


def _embedded(
    net: TagNet, idx: np.ndarray, batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings (on the CPU) and labels of these clips, the network in evaluation mode."""
    net.eval()
    embedded, labels = [], []
    with torch.no_grad():
        for start in range(0, len(idx), batch_size * 4):
            x, y = batch(idx[start : start + batch_size * 4])
            embedded.append(net.embedding(x).float().cpu())
            labels.append(y.cpu())
    return torch.cat(embedded), torch.cat(labels)


def _evaluate(
    net: TagNet,
    idx: np.ndarray,
    batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    n_classes: int,
    batch_size: int,
) -> tuple[float, float, np.ndarray]:
    net.eval()
    with torch.no_grad():
        parts = (batch(idx[start : start + batch_size * 4]) for start in range(0, len(idx), batch_size * 4))
        return _scored(((net(x), y) for x, y in parts), n_classes)


def _scored(parts: Iterable[tuple[torch.Tensor, torch.Tensor]], n_classes: int) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, confusion matrix) of (logits, labels) batches; zeros for no clips."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    total = 0.0
    for logits, y in parts:
        total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        np.add.at(confusion, (y.cpu().numpy(), logits.argmax(1).cpu().numpy()), 1)
    clips = int(confusion.sum())
    return (total / clips, float(np.trace(confusion) / clips), confusion) if clips else (0.0, 0.0, confusion)


def _recalibrate_batch_norm(
    net: TagNet, idx: np.ndarray, batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]], batch_size: int
) -> None:
    """Batch-norm statistics of (up to 2048 of) the unaugmented training clips, in the shuffled order given,
    in passes of sizes within one of each other: the cumulative average weighs each pass alike, and a last
    pass of one clip (129 clips in passes of 128) made half of every mean and variance. With few examples an
    epoch is a step or two, far too few for running averages to settle, and evaluation would see stale
    statistics."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass below
    net.eval()
    for m in norms:
        m.train()
    used = idx[:2048]
    with torch.no_grad():
        for part in np.array_split(used, max(1, math.ceil(len(used) / (batch_size * 4)))):
            net(batch(part)[0])
    for m in norms:
        m.momentum = 0.1


def _fit_known(
    net: TagNet,
    result: TrainResult,
    known: Known,
    rows: list[int | None],
    pull: float,
    split: tuple[np.ndarray, np.ndarray],
    groups: np.ndarray,
    batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """The head of a dataset of tags the base knows, fitted on the training clips' embedding and pulled
    towards the known rows. The body stays the base's, batch norm included: the rows were fitted on its
    embedding as it is. One entry of history says what the fit came to, measured on the held-out clips;
    the head kept is then fitted on every clip (seconds, where epochs would have to be run again), so that
    a fifth of a 50-clip class is not left out of the model it was measured for."""
    started = time.monotonic()
    train_idx, val_idx = split
    embedded, labels = _embedded(net, np.concatenate([train_idx, val_idx]), batch, batch_size)
    n = len(train_idx)
    loss, weight, bias = known.fit(embedded[:n], labels[:n], rows, pull)
    held = [(embedded[n:] @ weight.T + bias, labels[n:])]
    if not len(val_idx):  # too few to hold clips out: each fold of them in turn, as a fit takes a second
        held, result.folds = _folds_held_out(known, embedded, labels, groups[train_idx], rows, pull, cancelled)
    val_loss, result.val_accuracy, result.confusion = _scored(held, len(rows))
    if len(val_idx):
        _, weight, bias = known.fit(embedded, labels, rows, pull)
    _set_head(net, weight, bias)
    result.best_epoch = 1
    seconds = time.monotonic() - started
    result.history.append(
        {
            "epoch": 1,
            "train_loss": loss,
            "val_loss": val_loss,
            "val_accuracy": result.val_accuracy,
            "seconds": seconds,
        }
    )


FOLDS = 5  # a small dataset's folds, each held out in turn from a fit on the others


def _folds_held_out(
    known: Known,
    embedded: torch.Tensor,
    labels: torch.Tensor,
    sources: np.ndarray,
    rows: list[int | None],
    pull: float,
    cancelled: Callable[[], bool],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """(logits, labels) of every clip from a fit on the other folds, and how many folds were fitted: a dataset with
    a tag of under SMALL_CLASS clips holds none out, and said its training clips' accuracy (1.0 where held-out
    files scored 0.78) as its validation's. Each tag's clips are cut into up to FOLDS runs in the dataset's order
    (by path as its folders were read, an add's files after them: the layers of one hit, `Kick_01a`, `Kick_01b`,
    stay in one fold, not each checked beside its twin); a tag has two clips at least (shards.too_few), so every
    fit has clips of every tag, and a dataset whose tags all have two clips makes two folds. A tag whose clips
    come from several folders (`sources`, the dataset's groups: --labels suggest) holds out whole folders in turn,
    as validation does (split_by_group): clips of one folder are alike, and a fold beside its folder's other
    clips read 10-20 points higher than files of another pack. With one folder a tag, it reads high still."""
    y = labels.numpy()
    fold = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        folders = np.unique(sources[members])
        if len(folders) >= 2:
            fold[members] = np.searchsorted(folders, sources[members]) % FOLDS
        else:
            fold[members] = np.arange(len(members)) * FOLDS // len(members)
    held = []
    for f in range(FOLDS):
        if cancelled():  # (seconds each on thousands of clips)
            raise Cancelled("training cancelled")
        out = torch.from_numpy(fold == f)
        if not out.any():  # (every tag of fewer clips than folds)
            continue
        _, weight, bias = known.fit(embedded[~out], labels[~out], rows, pull)
        held.append((embedded[out] @ weight.T + bias, labels[out]))
    return held, len(held)


def _set_head(net: TagNet, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        net.head.weight.copy_(weight)
        net.head.bias.copy_(bias)


def _imprint(
    net: TagNet,
    idx: np.ndarray,
    labels: np.ndarray,
    batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    n_classes: int,
    batch_size: int,
) -> None:
    """Start the new head as the nearest class mean of the pretrained embeddings ("weight imprinting").

    A head drawn at random and trained on ten clips per class lands far from what the body already
    separates: measured on the 12-effect set at ten clips per class, a plain logistic regression on the
    frozen embeddings beat the fine-tuned network by 17 points (0.59 against 0.41). With weights μ_c and
    biases −|μ_c|²/2, the logits order the classes by distance to their mean embedding, so training starts
    from that classifier instead. The scale, 2 / (mean squared distance of a clip to its own class mean),
    keeps those first logits in the range a softmax trains well from, whatever the size of the base's
    embeddings. The means come from up to 4096 of the shuffled clips, as many of each class as there are
    up to its share (_shares)."""
    idx = _shares(idx, labels, n_classes)
    _recalibrate_batch_norm(net, idx, batch, batch_size)
    e, y = _embedded(net, idx, batch, batch_size)
    with torch.no_grad():
        sums = torch.zeros(n_classes, e.shape[1]).index_add_(0, y, e)
        means = sums / torch.bincount(y, minlength=n_classes).clamp(min=1)[:, None]
        spread = float((e - means[y]).square().sum(1).mean())
        scale = 2.0 / max(spread, 1e-6)
        net.head.weight.copy_(means * scale)
        net.head.bias.copy_(-0.5 * scale * means.square().sum(1))


def _shares(idx: np.ndarray, labels: np.ndarray, n_classes: int, most: int = 4096) -> np.ndarray:
    """Up to `most` of these clips in their order, as many of each class as there are up to an even share:
    the first 4096 of a large dataset left out a small class a third of the time, and its row of the head
    started at zero."""
    share, taken = max(1, most // n_classes), np.zeros(n_classes, np.int64)
    keep = np.zeros(len(idx), bool)
    for i, c in enumerate(labels[idx]):
        if taken[c] < share:
            keep[i], taken[c] = True, taken[c] + 1
    return idx[keep]


def _load_base(net: TagNet, base: dict[str, torch.Tensor]) -> None:
    """Everything but the classifier comes from the base model; the head starts fresh for the new classes."""
    own = net.state_dict()
    body = {k: v for k, v in base.items() if not k.startswith("head.")}
    mismatched = [k for k, v in body.items() if k not in own or own[k].shape != v.shape]
    if mismatched or set(own) - set(body) - {k for k in own if k.startswith("head.")}:
        raise ValueError(f"base model does not fit this network (differs in {mismatched[:3] or 'layers'})")
    net.load_state_dict(body, strict=False)
