"""A small line plot drawn with QPainter: the live loss curve and the noise autocorrelation.

Drawn by hand so the plugin needs no plotting library; it only has to show a
trend at a glance, with its latest value and range written out.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class LinePlot(QWidget):
    """Points (x, y) as a polyline; ``log_y`` for losses; ``smooth`` an exponential moving average drawn on top."""

    def __init__(self, title: str = "", *, log_y: bool = False, smooth: float = 0.0, zero_line: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title, self.log_y, self.smooth, self.zero_line = title, log_y, smooth, zero_line
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def clear(self) -> None:
        self.xs, self.ys = [], []
        self.update()

    def set_points(self, xs: list[float], ys: list[float]) -> None:
        self.xs, self.ys = [float(x) for x in xs], [float(y) for y in ys]
        self.update()

    def add_point(self, x: float, y: float) -> None:
        if math.isfinite(y):
            self.xs.append(float(x))
            self.ys.append(float(y))
            self.update()

    def _tf(self, y: float) -> float:
        return math.log10(max(y, 1e-12)) if self.log_y else y

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fg = self.palette().windowText().color()
        w, h = self.width(), self.height()
        left, right, top, bottom = 8, 8, 18, 8
        p.setPen(fg)
        label = self.title
        if self.ys:
            label += f"   last {self.ys[-1]:.4g}   min {min(self.ys):.4g}   max {max(self.ys):.4g}"
        p.drawText(left, 13, label)
        box_w, box_h = w - left - right, h - top - bottom
        p.setPen(QPen(QColor(128, 128, 128, 120)))
        p.drawRect(left, top, box_w, box_h)
        if len(self.xs) < 2:
            p.end()
            return
        ty = [self._tf(y) for y in self.ys]
        x0, x1 = min(self.xs), max(self.xs)
        y0, y1 = min(ty), max(ty)
        if self.zero_line:
            y0, y1 = min(y0, 0.0), max(y1, 0.0)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        sx = box_w / max(x1 - x0, 1e-12)
        sy = box_h / (y1 - y0)

        def pt(x: float, y: float) -> QPointF:
            return QPointF(left + (x - x0) * sx, top + box_h - (y - y0) * sy)

        if self.zero_line:
            p.setPen(QPen(QColor(128, 128, 128, 160), 1, Qt.DashLine))
            p.drawLine(pt(x0, 0.0), pt(x1, 0.0))
        p.setPen(QPen(QColor(90, 160, 255, 150 if self.smooth else 255), 1.2))
        p.drawPolyline(QPolygonF([pt(x, y) for x, y in zip(self.xs, ty, strict=True)]))
        if self.smooth:
            avg, pts = ty[0], []
            for x, y in zip(self.xs, ty, strict=True):
                avg = self.smooth * avg + (1 - self.smooth) * y
                pts.append(pt(x, avg))
            p.setPen(QPen(QColor(255, 170, 60), 2))
            p.drawPolyline(QPolygonF(pts))
        p.end()
