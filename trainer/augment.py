"""Augmentations applied to batches of dB spectrograms on the training device.

Few examples per class is the normal case for a producer's own tags, so every batch is varied: shifted in
time and in mel frequency, stretched in time, given a gentle random EQ, masked (SpecAugment) and mixed with
another batch element (mixup). Masks and shifts fill with the floor (silence), which is what the daemon's
zero padding produces. The EQ is there because the same instrument from another vendor or microphone
differs most in its spectral envelope: a smooth tilt and bumps of a few dB, not a filter (a low-pass is a
sound of its own, and a tag some users train).

Each clip gets its own draw, but a batch is transformed at once (index arithmetic and gathers, a few
dozen tensor operations): a loop over the clips launched about 25 small operations per clip, 3,000 a
step of the demo recipe, each a kernel launch on a GPU. On the CPU the batch goes through in parts of
CPU_CHUNK clips, whose temporaries stay small (`benchmarks/bench_train_step.py` times it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

EQ_DB = 4.0  # largest tilt of the random EQ, in dB at either end of the mel axis
EQ_ORDERS = 3  # cosine bumps of the EQ curve, order k at most EQ_DB / k
MEL_SHIFT = 2.0  # largest shift along the mel axis, in bands
EARLY = 2.0  # largest shift earlier in time, in frames (later: up to a quarter of the clip)
# the share of clips moved later (up to a quarter of the clip); the rest start at their first sound, as the daemon
# reads every file: when all were moved (0.36 s on average), held-out banks were heard 0.3-5.7 points worse
# (docs/demo-model.md, "Where a training clip starts")
LATE_SHARE = 0.25
CPU_CHUNK = 16  # clips at once on the CPU: 64 at once took 29-61 ms a batch here, 16 at once 20-32 ms
# lo-fi copies (LoFi): the low-pass of each sample rate a sampler or a bit-crusher runs at (8, 11.025, 16 and
# 22.05 kHz), and the range of an 8- to 12-bit quantisation's white noise in a mel band, in dB under the clip's
# loudest band (full-scale tones put it far down, broadband hits nearer)
LOFI_CUTOFFS_HZ = (4000.0, 5512.5, 8000.0, 11025.0)
LOFI_NOISE_DB = (-80.0, -45.0)
LOFI_LEFT = 1e-6  # a clip whose sound the low-pass leaves under -60 dB of its peak stays as it was: hiss, no hi-hat


def augment(x: torch.Tensor, floor: float, generator: torch.Generator, masks: bool = True) -> torch.Tensor:
    """x: (N, C, M, T). Returns a new tensor; each clip gets its own random draw from `generator` (a CPU
    generator whatever the device). masks=False leaves out SpecAugment, whose silent stripes and notches
    look like tremolo, gating and comb filtering."""
    n, _, m, t = x.shape
    if x.device.type == "cpu" and n > CPU_CHUNK:
        return torch.cat([augment(part, floor, generator, masks) for part in x.split(CPU_CHUNK)])

    def draw(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    frames = (t * draw(0.8, 1.25)).long().clamp(min=8)  # the stretched clip's length, cut or padded to t
    # frames later (LATE_SHARE of the clips), the gap silence, as a leading silence the decoder left; at most
    # EARLY frames earlier: the daemon reads a file from its first sound, and a third of the clips shifted up
    # to 0.37 s earlier lost their attack (a closed hi-hat, all of it a fifth of the time)
    shift = draw(-EARLY, t / 4)
    if LATE_SHARE < 1:  # (no draw when all are: `late` of scripts/melodic_probe.py, as before stop 45)
        shift = torch.where(draw(0, 1) < LATE_SHARE, shift, shift.clamp(max=0))
    shift = shift.long()
    bands = draw(-MEL_SHIFT, MEL_SHIFT).round().long()  # bands higher; the edge band repeats into the gap
    gains = torch.stack([draw(-EQ_DB, EQ_DB) / order for order in range(1, EQ_ORDERS + 1)], 1)
    phase = draw(0, math.pi)
    out = _stretch_and_shift(x, frames, shift, floor)
    out = _gather(out, 2, (torch.arange(m)[None] - bands[:, None]).clamp(0, m - 1))
    out = _equalise(out, floor, gains, phase)
    if masks:
        hidden = torch.zeros(n, 1, m, t, dtype=torch.bool, device=x.device)
        for _ in range(2):
            across, along = _stripes(draw, t, t / 10).to(x.device), _stripes(draw, m, m / 12).to(x.device)
            hidden |= across[:, None, None, :] | along[:, None, :, None]
        out = out.masked_fill(hidden, floor)
    # a short one-shot a mask or a stretch left silent would teach the tag as silence (the dataset drops
    # silent clips for that): such a clip stays as it was
    silenced = (out.flatten(1).amax(1) <= floor) & (x.flatten(1).amax(1) > floor)
    return torch.where(silenced[:, None, None, None], x, out)


def _stretch_and_shift(x: torch.Tensor, frames: torch.Tensor, shift: torch.Tensor, floor: float) -> torch.Tensor:
    """Each clip resampled in time to `frames` columns (linear interpolation, as torch's bilinear resize
    with align_corners=False reads its source), then moved by `shift` frames; what no frame covers is floor."""
    t = x.shape[-1]
    column = torch.arange(t)[None] - shift[:, None]  # the stretched clip's column each output frame shows
    inside = (column >= 0) & (column < frames[:, None].clamp(max=t))
    source = ((column + 0.5) * (t / frames[:, None]) - 0.5).clamp(0, t - 1)
    left = source.floor().long()
    right = (left + 1).clamp(max=t - 1)
    weight = (source - left).to(x.dtype).to(x.device)[:, None, None, :]
    resampled = torch.lerp(_gather(x, 3, left), _gather(x, 3, right), weight)
    return resampled.masked_fill(~inside.to(x.device)[:, None, None, :], floor)


def _gather(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """x's entries along `dim` (2: mel, 3: time) at a per-clip index of shape (N, size)."""
    shape = [len(x), 1, 1, 1]
    shape[dim] = index.shape[1]
    return torch.gather(x, dim, index.to(x.device).view(shape).expand(*x.shape[:dim], -1, *x.shape[dim + 1 :]))


def _stripes(draw: Callable[[float, float], torch.Tensor], size: int, widest: float) -> torch.Tensor:
    """One stripe per clip of up to `widest` steps of an axis of `size`, as a (N, size) mask."""
    width = draw(0, widest).long()
    start = (draw(0, 1) * (size - width)).long()
    steps = torch.arange(size)[None]
    return (steps >= start[:, None]) & (steps < (start + width)[:, None])


def _equalise(x: torch.Tensor, floor: float, gains: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Add a smooth curve over the mel bands (a sum of low-order cosines, gains (N, orders), the first
    order without phase) to everything above the floor, and keep each clip's loudest value at 0 dB, as the
    daemon's reference to the maximum does."""
    m = x.shape[2]
    k = torch.linspace(0, math.pi, m, dtype=torch.float64)[None]
    curve = sum(gains[:, i, None] * torch.cos((i + 1) * k + phase[:, None] * (i > 0)) for i in range(gains.shape[1]))
    sounding = x > floor
    out = torch.where(sounding, x + torch.as_tensor(curve).to(x.dtype).to(x.device)[:, None, :, None], x)
    out = out - out.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(sounding, out.clamp(min=floor), out.new_full((), floor))


class LoFi:
    """What a lower sample rate and fewer bits do to each band of a mel spectrogram of these parameters: a
    sample pack's SP-1200 drums or 8-bit chip sounds, which the demo model called something else two times in
    three (docs/demo-model.md, "Lo-fi samples"). Worked out on the power of each band, from its filter's
    weights: a low-pass keeps the share of the filter below its cutoff, and white noise fills each band in
    proportion to its filter's area, so no audio is needed (the trainer has spectrograms only)."""

    def __init__(self, filters: np.ndarray, sample_rate: int) -> None:
        freqs = np.linspace(0, sample_rate / 2, filters.shape[1])
        area = filters.sum(1).clip(min=1e-12)
        kept = [filters[:, freqs <= c].sum(1) / area for c in LOFI_CUTOFFS_HZ if c < sample_rate / 2]
        kept.append(np.ones(len(area)))  # the clip's own rate: hiss alone
        self.kept = torch.from_numpy(np.stack(kept))  # (cutoffs + 1, M): each band's power kept, 0 to 1
        self.noise = torch.from_numpy(area / area.max())  # (M,): white noise's power in each band, 1 in the widest

    def __call__(self, x: torch.Tensor, floor: float, share: float, generator: torch.Generator) -> torch.Tensor:
        """x: (N, C, M, T) dB re each clip's loudest value, `floor` its silence. A `share` of the clips made lo-fi:
        three in four band-limited, the others and three in four of those hissing (the hiss band-limited too:
        a sampler's quantisation noise lies under its own Nyquist); referenced to their loudest value again. A
        clip with nothing left (a hi-hat all above 4 kHz) stays as it was."""
        picked = torch.rand(len(x), generator=generator) < share
        n = int(picked.sum())
        if not n:
            return x
        cut = torch.rand(n, generator=generator) < 0.75
        hiss = ~cut | (torch.rand(n, generator=generator) < 0.75)
        rate = torch.where(cut, torch.randint(len(self.kept) - 1, (n,), generator=generator), len(self.kept) - 1)
        lo, hi = LOFI_NOISE_DB
        level = torch.pow(10.0, (lo + (hi - lo) * torch.rand(n, generator=generator).double()) / 10) * hiss
        # each band and frame's own noise power: a gamma of shape 2 and mean 1 (two exponentials' mean)
        grain = torch.rand((2, n, *x.shape[1:]), generator=generator).clamp(min=1e-12).log().sum(0) / -2
        clips = x[picked.to(x.device)].double()
        kept = self.kept[rate][:, None, :, None].to(x.device)  # (n, 1, M, 1)
        power = torch.where(clips > floor, torch.pow(10.0, clips / 10), 0.0)  # the floor is silence, no sound
        sounding = (clips > floor).any(dim=2, keepdim=True)  # frames with sound: digital silence stays silent
        noise = (level[:, None, None, None] * self.noise[None, None, :, None]).to(x.device) * grain.to(x.device)
        total = (power + noise * sounding) * kept
        top = total.amax(dim=(1, 2, 3), keepdim=True)
        out = 10 * torch.log10((total / top.clamp(min=1e-300)).clamp(min=1e-30))
        out = torch.where(total > 0, out.clamp(min=floor), torch.full_like(out, floor))
        left = (power * kept).amax(dim=(1, 2, 3), keepdim=True) > LOFI_LEFT  # (the clip's own top was 1)
        return x.index_put((picked.to(x.device),), torch.where(left, out, clips).to(x.dtype))


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each clip with another one of the batch; y is one-hot (soft) targets."""
    if alpha <= 0 or len(x) < 2:
        return x, y
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)  # the original clip stays dominant
    order = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[order], lam * y + (1 - lam) * y[order]
