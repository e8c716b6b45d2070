"""Augmentations applied to batches of dB spectrograms on the training device.

Few examples per class is the normal case for a producer's own tags, so every batch is varied: shifted in
time and in mel frequency, stretched in time, given a gentle random EQ, masked (SpecAugment) and mixed with
another batch element (mixup). Masks and shifts fill with the floor (silence), which is what the daemon's
zero padding produces. The EQ is there because the same instrument from another vendor or microphone
differs most in its spectral envelope: a smooth tilt and bumps of a few dB, not a filter (a low-pass is a
sound of its own, and a tag some users train).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, floor: float, generator: torch.Generator, masks: bool = True) -> torch.Tensor:
    """x: (N, C, M, T). Returns a new tensor; each clip gets its own random draw. masks=False leaves out
    SpecAugment, whose silent stripes and notches look like tremolo, gating and comb filtering."""
    n, _, m, t = x.shape
    out = torch.empty_like(x)

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for i in range(n):
        clip = x[i]
        stretch = rand(0.8, 1.25)
        frames = max(8, int(t * stretch))
        clip = F.interpolate(clip[None], size=(m, frames), mode="bilinear", align_corners=False)[0]
        clip = clip[..., :t] if frames >= t else F.pad(clip, (0, t - frames), value=floor)
        clip = _shift(clip, int(rand(-t / 8, t / 4)), dim=2, fill=floor)
        clip = _shift(clip, round(rand(-2, 2)), dim=1, fill=None)
        clip = _equalise(clip, floor, [rand(-EQ_DB, EQ_DB) / order for order in (1, 2, 3)], rand(0, math.pi))
        for _ in range(2 if masks else 0):
            width = int(rand(0, t / 10))
            start = int(rand(0, t - width))
            clip[..., start : start + width] = floor
            height = int(rand(0, m / 12))
            low = int(rand(0, m - height))
            clip[:, low : low + height, :] = floor
        out[i] = clip
    return out


EQ_DB = 4.0  # largest tilt of the random EQ, in dB at either end of the mel axis


def _equalise(clip: torch.Tensor, floor: float, gains: list[float], phase: float) -> torch.Tensor:
    """Add a smooth curve over the mel bands (a sum of low-order cosines) to everything above the floor,
    and keep the loudest value at 0 dB, as the daemon's reference to the maximum does."""
    m = clip.shape[1]
    k = torch.linspace(0, math.pi, m, device=clip.device)
    curve = sum(g * torch.cos(order * k + phase * (order > 1)) for order, g in enumerate(gains, start=1))
    sounding = clip > floor
    out = torch.where(sounding, clip + torch.as_tensor(curve, dtype=clip.dtype)[None, :, None], clip)
    out = out - out.max()
    return torch.where(sounding, out.clamp(min=floor), out.new_full((), floor))


def _shift(clip: torch.Tensor, k: int, dim: int, fill: float | None) -> torch.Tensor:
    """Shift along dim by k; the vacated part takes `fill`, or repeats the edge when fill is None."""
    if k == 0:
        return clip
    size = clip.shape[dim]
    k = max(-size + 1, min(size - 1, k))
    moved = torch.roll(clip, k, dims=dim)
    edge = clip.narrow(dim, 0, 1) if k > 0 else clip.narrow(dim, size - 1, 1)
    gap = moved.narrow(dim, 0, k) if k > 0 else moved.narrow(dim, size + k, -k)
    gap.copy_(torch.full_like(gap, fill) if fill is not None else edge.expand_as(gap))
    return moved


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
