"""The training engine: data, one training loop driven by tasks, DDP, checkpoints,
evaluation and run configs. Methods train through it; see docs/training.md.
"""

from __future__ import annotations

from .config import (
    apply_overrides,
    check_keys,
    config_hash,
    parse_override,
    save_resolved,
    section,
)
from .data import Data, DataConfig, DataSpec, build_data
from .distributed import DistContext, dist_context
from .evaluate import evaluate, evaluate_pool, format_table
from .model import ModelConfig, build_model, load_model, model_info, save_model
from .settings import load_config, resolve
from .standalone import train_model
from .teacher import LogitsTeacher, load_teacher
from .tasks import Batch, ClassificationTask, DistillationTask, PoolTask, TrainTask, soft_cross_entropy
from .callbacks import Callback, StepState
from .trainer import FitResult, Student, TrainConfig, fit, fit_together, learning_rate

__all__ = [
    "Batch", "Callback", "ClassificationTask", "Data", "DataConfig", "DataSpec", "DistContext", "DistillationTask",
    "FitResult", "LogitsTeacher", "ModelConfig", "PoolTask", "StepState", "Student", "TrainConfig", "TrainTask", "apply_overrides",
    "build_data", "build_model", "check_keys", "config_hash", "dist_context", "evaluate", "evaluate_pool",
    "fit", "fit_together", "format_table", "learning_rate", "load_config", "load_model", "load_teacher", "model_info", "parse_override",
    "resolve", "save_model", "save_resolved", "section", "soft_cross_entropy", "train_model",
]
