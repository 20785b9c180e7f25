"""Dual-encoder contrastive training with KG priors (``histokg train``)."""

from histokg.train.config import DataConfig, EarlyStoppingConfig, OptimConfig, TrainConfig
from histokg.train.trainer import Trainer, TrainingError, TrainResult, train

__all__ = [
    "DataConfig",
    "EarlyStoppingConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "train",
]
