"""Render the tray's menu and its icons offscreen to docs/tray-menu.png (no display, no daemon needed).

The state shown is built from the daemon's own proto messages through the same state logic the live
tray uses: a library being indexed while a model trains, with two recent errors.

    python scripts/screenshot_tray.py [OUT.png]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtGui import QColor, QPainter, QPixmap
from PySide6.QtWidgets import QApplication
from vibrary.clients import tray_state as ts
from vibrary.clients.tray import Tray, draw_icon
from vibrary.proto import daemon_pb2 as pb

LABELS = {
    ts.Icon.IDLE: "idle",
    ts.Icon.INDEXING: "indexing (done of queued)",
    ts.Icon.TRAINING: "training (epochs done)",
    ts.Icon.PAUSED: "paused",
    ts.Icon.ERROR: "new files failed",
    ts.Icon.NOT_RUNNING: "daemon not running",
}


def example_state() -> ts.TrayState:
    state = ts.with_status(ts.TrayState(), pb.Status(indexed=3766, pending=0, models=["demo@1", "mytags@2"]))
    state = ts.with_status(state, pb.Status(indexed=3766, pending=1234, models=["demo@1", "mytags@2"]))
    state = ts.with_status(state, pb.Status(indexed=4512, failed=2, pending=488, models=["demo@1", "mytags@2"]))
    return ts.with_errors(
        state,
        [
            pb.FileTags(path="/samples/Drums/kick_07.wav", error="empty file (0 bytes)"),
            pb.FileTags(path="/samples/FX/riser.aif", error="permission denied"),
        ],
    )


def main(out: str = "docs/tray-menu.png") -> None:
    app = QApplication.instance() or QApplication([])
    tray = Tray(Path(tempfile.mkdtemp(prefix="vibrary-shot-")))  # never started: no daemon is contacted
    tray.set_state(example_state())
    tray.menu.adjustSize()
    menu = tray.menu.grab()
    errors_action = next(a for a in tray.menu.actions() if a.text().startswith("Recent errors"))
    errors = errors_action.menu()
    errors.adjustSize()
    sub_y = tray.menu.actionGeometry(errors_action).top()
    submenu = errors.grab()

    legend_w, pad, row = 260, 16, 40
    width = legend_w + menu.width() + submenu.width() + 3 * pad
    tip_lines = len(tray.view.tooltip.splitlines()) + 1
    height = max(menu.height() + 8 + 20 * tip_lines, row * len(LABELS)) + 2 * pad
    shot = QPixmap(width, height)
    shot.fill(QColor("#f4f4f4"))
    p = QPainter(shot)
    for n, (icon, label) in enumerate(LABELS.items()):
        y = pad + n * row
        p.drawPixmap(pad, y, draw_icon(icon, 0.6, 32))
        p.drawText(QRect(pad + 44, y, legend_w - 44, 32), Qt.AlignmentFlag.AlignVCenter, label)
    x = legend_w + 2 * pad
    p.drawPixmap(QPoint(x, pad), menu)
    p.drawPixmap(QPoint(x + menu.width() - 4, pad + sub_y), submenu)
    tip_y = pad + menu.height() + 8
    p.drawText(QRect(x, tip_y, width - x, height - tip_y), Qt.AlignmentFlag.AlignLeft, "tooltip:\n" + tray.view.tooltip)
    p.end()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not shot.save(out):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out} ({shot.width()}x{shot.height()})")
    app.quit()


if __name__ == "__main__":
    main(*sys.argv[1:2])
