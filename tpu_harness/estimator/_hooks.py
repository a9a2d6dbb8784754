"""TF's session hooks under the estimator's names.

TF's estimator module exported the `tf.compat.v1.train` session-hook
classes under its own name too (`tf.estimator.SessionRunHook is
tf.compat.v1.train.SessionRunHook`), and programs reach them there
(ELECTRA's `class ETAHook(tf.estimator.SessionRunHook)`, returning
`tf.estimator.SessionRunArgs`). These are the same classes, so that either
name works.
"""

import tensorflow as tf

_TRAIN = tf.compat.v1.train

CheckpointSaverHook = _TRAIN.CheckpointSaverHook
CheckpointSaverListener = _TRAIN.CheckpointSaverListener
FeedFnHook = _TRAIN.FeedFnHook
FinalOpsHook = _TRAIN.FinalOpsHook
GlobalStepWaiterHook = _TRAIN.GlobalStepWaiterHook
LoggingTensorHook = _TRAIN.LoggingTensorHook
NanLossDuringTrainingError = _TRAIN.NanLossDuringTrainingError
NanTensorHook = _TRAIN.NanTensorHook
ProfilerHook = _TRAIN.ProfilerHook
SecondOrStepTimer = _TRAIN.SecondOrStepTimer
SessionRunArgs = _TRAIN.SessionRunArgs
SessionRunContext = _TRAIN.SessionRunContext
SessionRunHook = _TRAIN.SessionRunHook
SessionRunValues = _TRAIN.SessionRunValues
StepCounterHook = _TRAIN.StepCounterHook
StopAtStepHook = _TRAIN.StopAtStepHook
SummarySaverHook = _TRAIN.SummarySaverHook

NAMES = ("CheckpointSaverHook", "CheckpointSaverListener", "FeedFnHook",
         "FinalOpsHook", "GlobalStepWaiterHook", "LoggingTensorHook",
         "NanLossDuringTrainingError", "NanTensorHook", "ProfilerHook",
         "SecondOrStepTimer", "SessionRunArgs", "SessionRunContext",
         "SessionRunHook", "SessionRunValues", "StepCounterHook",
         "StopAtStepHook", "SummarySaverHook")
