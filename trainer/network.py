"""The tagging CNN: panotti's VGG-style stack (3×3 convolutions, ELU, max pooling, dropout, small dense
head), sized for one-shot samples and fast enough for a laptop CPU to tag hundreds of clips a second.

Differences from panotti, and why: batch norm after every convolution (trains in few epochs on few
examples); widths grow 8→64 (the first layers see the full 96×259 image, so they stay thin: about 1000
clips/s on two cores); the time axis is pooled by mean and max before the dense layers, so a sound tags
the same wherever it starts and the head stays small. The input is the daemon's dB spectrogram as is:
scaling lives inside the network, so the exported ONNX model needs nothing but the daemon's spectrogram.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (8, 16, 32, 64)
EMBED = 128


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
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ELU(), nn.MaxPool2d(2)]
            if i > 0:
                layers.append(nn.Dropout(dropout))
            c_in = width
        self.features = nn.Sequential(*layers)
        bands = n_mels // 2 ** len(WIDTHS)
        self.embed = nn.Sequential(nn.Linear(2 * c_in * bands, EMBED), nn.ELU(), nn.Dropout(head_dropout))
        self.head = nn.Linear(EMBED, n_classes)
        self.half_range = top_db / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, mels, frames) dB in [-top_db, 0] → (N, classes) logits."""
        f = self.features(x / self.half_range + 1.0)
        pooled = torch.cat([f.mean(dim=3), f.amax(dim=3)], dim=1).flatten(1)
        return self.head(self.embed(pooled))


class WithSoftmax(nn.Module):
    """What gets exported: scores in [0, 1], so no consumer has to know the activation."""

    def __init__(self, net: TagNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)
