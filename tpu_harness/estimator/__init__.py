"""A replacement for `from tensorflow.compat.v1 import estimator as
tf_estimator` in TPUEstimator programs::

    from tpu_harness import estimator as tf_estimator

    tf_estimator.ModeKeys, tf_estimator.EstimatorSpec,
    tf_estimator.{Estimator, RunConfig, TrainSpec, EvalSpec,
                  train_and_evaluate},
    tf_estimator.export.{PredictOutput, ClassificationOutput,
                         RegressionOutput, ServingInputReceiver},
    tf_estimator.tpu.{TPUEstimator, TPUEstimatorSpec, RunConfig, TPUConfig,
                      InputPipelineConfig}

MIGRATING.md lists every TPUEstimator name and what it maps to.
"""

from tpu_harness.estimator import export
from tpu_harness.estimator import tpu
from tpu_harness.estimator._config import RunConfig
from tpu_harness.estimator._estimator import Estimator
from tpu_harness.estimator._spec import EstimatorSpec
from tpu_harness.estimator._training import EvalSpec
from tpu_harness.estimator._training import train_and_evaluate
from tpu_harness.estimator._training import TrainSpec
from tpu_harness.spec import ModeKeys

__all__ = ["EvalSpec", "Estimator", "EstimatorSpec", "ModeKeys", "RunConfig",
           "TrainSpec", "export", "tpu", "train_and_evaluate"]
