"""Self-supervised training (stage 1), multi-teacher distillation (stage 2) and D-BSN."""

from .dbsn import distill_dbsn, iter_distill_dbsn, iter_train_dbsn, train_dbsn
from .distill import distill, distill_loss, iter_distill
from .harness import TrainResult, checkpoint_config
from .train import iter_train, train

__all__ = ["TrainResult", "checkpoint_config", "distill", "distill_dbsn", "distill_loss", "iter_distill",
           "iter_distill_dbsn", "iter_train", "iter_train_dbsn", "train", "train_dbsn"]
