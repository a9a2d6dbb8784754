"""A replacement for `from tensorflow.compat.v1 import estimator as
tf_estimator` in TPUEstimator programs::

    from tpu_harness import estimator as tf_estimator

    tf_estimator.ModeKeys, tf_estimator.EstimatorSpec,
    tf_estimator.{Estimator, RunConfig, TrainSpec, EvalSpec,
                  train_and_evaluate},
    tf_estimator.export.{PredictOutput, ClassificationOutput,
                         RegressionOutput, ServingInputReceiver},
    tf_estimator.tpu.{TPUEstimator, TPUEstimatorSpec, RunConfig, TPUConfig,
                      InputPipelineConfig},
    tf_estimator.{SessionRunHook, SessionRunArgs, LoggingTensorHook, ...}
      (TF's own `tf.compat.v1.train` hook classes, as TF's estimator
      exported them)

MIGRATING.md lists every TPUEstimator name and what it maps to.
"""

from tpu_harness.estimator import _hooks
from tpu_harness.estimator import export
from tpu_harness.estimator import tpu
from tpu_harness.estimator._config import RunConfig
from tpu_harness.estimator._estimator import Estimator
from tpu_harness.estimator._hooks import CheckpointSaverHook
from tpu_harness.estimator._hooks import CheckpointSaverListener
from tpu_harness.estimator._hooks import FeedFnHook
from tpu_harness.estimator._hooks import FinalOpsHook
from tpu_harness.estimator._hooks import GlobalStepWaiterHook
from tpu_harness.estimator._hooks import LoggingTensorHook
from tpu_harness.estimator._hooks import NanLossDuringTrainingError
from tpu_harness.estimator._hooks import NanTensorHook
from tpu_harness.estimator._hooks import ProfilerHook
from tpu_harness.estimator._hooks import SecondOrStepTimer
from tpu_harness.estimator._hooks import SessionRunArgs
from tpu_harness.estimator._hooks import SessionRunContext
from tpu_harness.estimator._hooks import SessionRunHook
from tpu_harness.estimator._hooks import SessionRunValues
from tpu_harness.estimator._hooks import StepCounterHook
from tpu_harness.estimator._hooks import StopAtStepHook
from tpu_harness.estimator._hooks import SummarySaverHook
from tpu_harness.estimator._spec import EstimatorSpec
from tpu_harness.estimator._training import EvalSpec
from tpu_harness.estimator._training import train_and_evaluate
from tpu_harness.estimator._training import TrainSpec
from tpu_harness.spec import ModeKeys

__all__ = sorted(["EvalSpec", "Estimator", "EstimatorSpec", "ModeKeys",
                  "RunConfig", "TrainSpec", "export", "tpu",
                  "train_and_evaluate", *_hooks.NAMES])
