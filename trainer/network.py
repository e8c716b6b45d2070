"""The tagging CNN: panotti's VGG-style stack (3×3 convolutions, ELU, max pooling, dropout, small dense
head), sized for one-shot samples and fast enough for a laptop CPU to tag hundreds of clips a second.

Differences from panotti, and why:
- batch norm after every convolution: trains in few epochs on few examples;
- the 86 frames/s of the daemon's spectrogram are averaged in pairs before the first convolution: 43
  frames/s still resolve a 12 Hz tremolo or a 30 ms attack, and every layer then costs half. That buys
  widths of 16→128 (about 45 M multiply-adds per clip, twice the first version's 8→64 on full frames)
  at 1,600–2,000 clips/s on two cores (benchmarks/bench_demo.py, docs/benchmarks.md);
- the time axis is pooled by mean, max and standard deviation before the dense layers: a sound tags the
  same wherever it starts, and the deviation keeps how much a band moves over time (tremolo, vibrato,
  sweeps, echoes), which mean and max alone pool away;
- the input is the daemon's dB spectrogram as is: scaling lives inside the network, so the exported ONNX
  model needs nothing but the daemon's spectrogram.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vibrary.daemon.shards import MIN_FRAMES, MIN_MELS

WIDTHS = (16, 32, 64, 128)
EMBED = 128
TIME_POOL = 2
# what the daemon's datasets and the trainer's manifests are held to (daemon/shards.py)
assert (2 ** len(WIDTHS), TIME_POOL * 2 ** len(WIDTHS)) == (MIN_MELS, MIN_FRAMES)
POOLS = 3  # mean, max and standard deviation over time


class TagNet(nn.Module):
    def __init__(
        self,
        n_classes: int,
        channels: int = 1,
        n_mels: int = 96,
        top_db: float = 80.0,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i, width in enumerate(WIDTHS):
            # ELU after the pooling: the same values and gradients (ELU is increasing, so it commutes with
            # max), computed on a quarter of the elements; the layers' state_dict keys are unchanged
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.MaxPool2d(2), nn.ELU()]
            if i > 0:
                layers.append(nn.Dropout(dropout))
            c_in = width
        self.features = nn.Sequential(*layers)
        bands = n_mels // 2 ** len(WIDTHS)
        self.embed = nn.Sequential(nn.Linear(POOLS * c_in * bands, EMBED), nn.ELU(), nn.Dropout(head_dropout))
        self.head = nn.Linear(EMBED, n_classes)
        self.half_range = top_db / 2

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, mels, frames) dB in [-top_db, 0] → (N, EMBED): what every head reads."""
        return self.embed(pool_time(self.features(self.scaled(x))).flatten(1))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """dB in [-top_db, 0] → about [-1, 1], frames averaged in pairs: what the first convolution reads."""
        return F.avg_pool2d(x / self.half_range + 1.0, (1, TIME_POOL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, mels, frames) dB → (N, classes) logits."""
        return self.head(self.embedding(x))


def pool_time(f: torch.Tensor) -> torch.Tensor:
    """(N, C, bands, frames) → (N, POOLS·C, bands): mean, max and standard deviation over time."""
    mean = f.mean(dim=3)
    spread = (f - mean[..., None]).square().mean(dim=3).add(1e-6).sqrt()
    return torch.cat([mean, f.amax(dim=3), spread], dim=1)


class WithSoftmax(nn.Module):
    """What gets exported: scores in [0, 1], so no consumer has to know the activation; with `centroids`
    (one unit-length embedding per class, from the training clips) also each clip's familiarity, its cosine
    similarity to the nearest of them. A softmax shares its total over the model's own classes, so a kick
    scores 0.9 "dark pad" from a model that never heard a kick; how far the clip lies from every class's
    examples is what tells it is none of them (trainer/train.py `familiarity`)."""

    def __init__(self, net: TagNet, centroids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.centroids: torch.Tensor | None
        self.register_buffer("centroids", centroids)  # moves with the network (.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        embedded = self.net.embedding(x)
        scores = torch.softmax(self.net.head(embedded), dim=1)
        if self.centroids is None:
            return scores
        return scores, (F.normalize(embedded, dim=1) @ self.centroids.T).amax(dim=1)
