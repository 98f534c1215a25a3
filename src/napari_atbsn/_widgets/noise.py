"""Noise analysis widget: is the noise spatially correlated, and which method and blind spots fit it?

It runs the same :func:`napari_atbsn.analysis.analyze_noise` as ``atbsn analyze``:
noise isolated from differences of neighbouring planes when they show the same
scene, else from a high-pass residual in the flattest blocks; its
autocorrelation is plotted and turned into a suggestion (D-BSN for
pixel-independent noise, else AT-BSN with k_a covering the correlation length).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtGui import QFont
from qtpy.QtWidgets import QLabel, QPlainTextEdit

from ..analysis import analyze_noise
from ._base import JobWidget
from ._plot import LinePlot
from ._source import SourcePicker


class NoiseWidget(JobWidget):
    run_label = "Analyze"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source = SourcePicker(self)
        self.form.extend(self.source.fields)
        self.stop_button.hide()  # a few seconds at most: it reads at most 16 planes of 512 x 512
        self.recommendation = QLabel("")
        font = self.recommendation.font()
        font.setBold(True)
        self.recommendation.setFont(font)
        self.plot = LinePlot("noise autocorrelation by lag (px)", zero_line=True)
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setFont(QFont("monospace"))
        self.report.setMinimumHeight(150)
        for w in (self.recommendation, self.plot, self.report):
            self.extra.addWidget(w)
        self.analysis = None

    def start(self) -> None:
        src = self.source.get()

        def make(should_stop: Any) -> Any:
            yield (0, 1)
            return analyze_noise(src.data, src.axes)

        self.run_job(f"analysing the noise of {src.name}", make, on_done=self._done)

    def _done(self, analysis: Any) -> None:
        self.analysis = analysis
        acf = analysis.autocorrelation
        self.plot.set_points(list(range(len(acf))), list(acf))
        self.report.setPlainText(analysis.report())
        self.recommendation.setText(analysis.recommended_line())
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(f"neighbour correlation {analysis.neighbour:.3f} ({analysis.method})")
