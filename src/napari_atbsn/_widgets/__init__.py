"""The napari widgets: all Qt, napari and magicgui code of the package lives here.

Each widget is a thin form around a core function (training, distillation,
denoising, comparison, noise analysis); long jobs run in napari workers.
"""

from .compare import CompareWidget
from .denoise import DenoiseWidget
from .distill import DistillWidget
from .noise import NoiseWidget
from .train import TrainWidget

__all__ = ["CompareWidget", "DenoiseWidget", "DistillWidget", "NoiseWidget", "TrainWidget"]
