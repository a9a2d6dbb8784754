"""A TPUEstimator-style runner: many steps per Session.run, hooks around each.

Public surface::

  Runner                 train / evaluate / predict
  RunConfig, TPUConfig   frozen, validated configuration
  ModelSpec, ModeKeys    the model_fn contract
  CrossShardOptimizer    gradients combined across replicas
  DeviceLoop, BuiltLoop  the interface a device implementation provides
  CpuEmulationLoop       the local CPU implementation
  TpuLoop                the tf.compat.v1.tpu implementation
  CompatibilityProblem   why a step cannot run on a TPU: the op and the
                         user's line (Runner.check_tpu_compatibility)
  Error                  the base of every error below
  TPUCompatibilityError  a step cannot run on a TPU
  InputShapeError        input_fn gave batches of unknown shape
  InputEndedEarlyError   the input had fewer elements than its length
  InfeedMemoryError      the emulated infeed would need too much memory
  CheckpointMismatchError  a checkpoint of another model
  CheckpointRestoreError a named checkpoint does not read back
  NoRestorableCheckpointError  checkpoints of the run, none reads back
  CheckpointRotatedError a trainer beside rotated away every checkpoint chosen
  ModelDirBusyError      another trainer holds model_dir
  LeaseLostError         another trainer took model_dir over
  StorageError           storage kept failing or refused access
  NanLossError           the loss became NaN
  HostUnavailableError   a host of a pod (TPUConfig.hosts) is not up, or went
                         away
  TPUNotFoundError, TPUNotReadyError, TPUUnreachableError, NoTPUError
                         resolving or reaching a Cloud TPU failed
  install()              makes `tf.compat.v1.estimator` (and `tf.estimator`,
                         `tensorflow_estimator`) `tpu_harness.estimator` in
                         this process, so TPUEstimator programs run
                         unedited; `python -m tpu_harness PROGRAM.py
                         [ARGS...]` runs a program after it

Subpackages: `tpu_harness.estimator` (the TPUEstimator API),
`tpu_harness.loops` (device loops), `tpu_harness.tpu` (Cloud TPU
resolution, pods, the TPU compatibility check). Those whose names start
with `_` are internal: `_infeed` (host infeeds and the input's saved
position), `_model_dir` (checkpoints, storage, the lease), `_run` (one
training session, restored sessions, signals).

Importing it sets `TF_USE_LEGACY_KERAS=1` unless already set: TensorFlow
reads it on the first use of `tf.compat.v1.layers` or `tf.keras`, which then
give the legacy Keras (tf-keras) that graph-mode programs, TPUEstimator's
among them, are written for. Import `tpu_harness` before that first use, or
set the variable yourself.

Importing it also freezes the objects the garbage collector tracks at that
moment (`gc.freeze`: TensorFlow's modules), so full collections scan only
what was made after; see `tpu_harness._gc`.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from tpu_harness._install import install
from tpu_harness.config import RunConfig
from tpu_harness.config import TPUConfig
from tpu_harness.errors import CheckpointMismatchError
from tpu_harness.errors import CheckpointRestoreError
from tpu_harness.errors import CheckpointRotatedError
from tpu_harness.errors import Error
from tpu_harness.errors import HostUnavailableError
from tpu_harness.errors import InfeedMemoryError
from tpu_harness.errors import InputEndedEarlyError
from tpu_harness.errors import InputShapeError
from tpu_harness.errors import LeaseLostError
from tpu_harness.errors import ModelDirBusyError
from tpu_harness.errors import NanLossError
from tpu_harness.errors import NoRestorableCheckpointError
from tpu_harness.errors import NoTPUError
from tpu_harness.errors import StorageError
from tpu_harness.errors import TPUCompatibilityError
from tpu_harness.errors import TPUNotFoundError
from tpu_harness.errors import TPUNotReadyError
from tpu_harness.errors import TPUUnreachableError
from tpu_harness.loops import BuiltLoop
from tpu_harness.loops import CpuEmulationLoop
from tpu_harness.loops import CrossShardOptimizer
from tpu_harness.loops import DeviceLoop
from tpu_harness.loops import TpuLoop
from tpu_harness.runner import Runner
from tpu_harness.spec import ModeKeys
from tpu_harness.spec import ModelSpec
from tpu_harness.tpu.check import Problem as CompatibilityProblem
from tpu_harness import _gc

_gc.freeze_imported()

__all__ = [
    "BuiltLoop",
    "CheckpointMismatchError",
    "CheckpointRestoreError",
    "CheckpointRotatedError",
    "CompatibilityProblem",
    "CpuEmulationLoop",
    "CrossShardOptimizer",
    "DeviceLoop",
    "Error",
    "HostUnavailableError",
    "InfeedMemoryError",
    "InputEndedEarlyError",
    "InputShapeError",
    "LeaseLostError",
    "ModelDirBusyError",
    "ModeKeys",
    "ModelSpec",
    "NanLossError",
    "NoRestorableCheckpointError",
    "NoTPUError",
    "Runner",
    "RunConfig",
    "StorageError",
    "TPUCompatibilityError",
    "TPUConfig",
    "TPUNotFoundError",
    "TPUNotReadyError",
    "TPUUnreachableError",
    "TpuLoop",
    "install",
]
