"""Self-supervised training (stage 1) and multi-teacher distillation (stage 2)."""

from .distill import distill, distill_loss, iter_distill
from .train import TrainResult, iter_train, train

__all__ = ["TrainResult", "distill", "distill_loss", "iter_distill", "iter_train", "train"]
