"""The two pictures every training job returns: how it learned, and what it confuses."""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on a server or in CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def learning_curve(
    history: list[dict[str, float]], title: str, loss_label: str = "training loss", fitted: bool = False
) -> bytes:
    """Loss per epoch, and validation loss and accuracy when the run had a validation split (a small
    dataset trains on every clip: drawing flat zeros for it would read as a model that learned nothing).
    `fitted`: one fit of tags the base knows (trainer/known.py), no epochs."""
    epochs = [h["epoch"] for h in history]
    validated = any(h["val_loss"] for h in history)
    fig, loss_ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    dot = "o" if len(history) == 1 else None  # one fit from known rows (trainer/known.py): a point, not a line
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label=loss_label, color="tab:blue", marker=dot)
    if validated:
        loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="tab:orange", marker=dot)
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 3-epoch training had an epoch 1.25
    if dot:  # an axis of 0.945 to 1.05 around one dot, and nothing said of why there is no curve
        loss_ax.set_xlim(0, 2)
        said = "one fit of tags the base model knows: no epochs, no curve" if fitted else "one epoch: no curve"
        loss_ax.text(0.5, 0.06, said, transform=loss_ax.transAxes, ha="center", fontsize=8, color="dimgray")
    loss_ax.set_ylabel("loss")
    lines = loss_ax.get_legend_handles_labels()[0]
    if validated:
        acc_ax = loss_ax.twinx()
        acc_ax.plot(
            epochs, [h["val_accuracy"] for h in history], label="validation accuracy", color="tab:green", marker=dot
        )
        acc_ax.set_ylim(0, 1.02)
        acc_ax.set_ylabel("accuracy")
        lines += acc_ax.get_legend_handles_labels()[0]
    loss_ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    loss_ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def confusion_matrix(confusion: np.ndarray, classes: list[str], title: str) -> bytes:
    return _png(confusion_figure(confusion, classes, title))


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str) -> plt.Figure:
    n = len(classes)
    # never smaller than a tag's name needs (two tags made a 2.1-inch square); the title wrapped to its width (a
    # small dataset's "clips held out in 5 folds, in turn, by a head on the base's embedding" was cut at both ends)
    width = max(3.6, 1.2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(width, max(3.4, 1.0 + 0.45 * n)), dpi=100)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(n), classes, rotation=60, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # over the figure, not the axes: centred over the axes, which the tags' names push right, a line ran off the edge
    fig.suptitle("\n".join(w for line in title.split("\n") for w in textwrap.wrap(line, int(12 * width))), fontsize=9)
    fig.tight_layout()
    return fig


def _png(fig: plt.Figure) -> bytes:
    """A figure laid out by its maker (confusion_figure's layout is measured before it is drawn), as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
