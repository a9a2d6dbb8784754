"""A TPUEstimator-style runner: many steps per Session.run, hooks around each.

Public surface::

  Runner                 train / evaluate / predict
  RunConfig, TPUConfig   frozen, validated configuration
  ModelSpec, ModeKeys    the model_fn contract
  CrossShardOptimizer    gradient averaging across replicas
  DeviceLoop, BuiltLoop  the interface a device implementation provides
  CpuEmulationLoop       the local CPU implementation
  TpuLoop                the tf.compat.v1.tpu implementation
  TPUCompatibilityError  a step cannot run on a TPU (Runner.check_tpu_...)
  CompatibilityProblem   one reason why: the op and the user's line
  InputShapeError        input_fn gave batches of unknown shape
  InfeedMemoryError      the emulated infeed would need too much memory
  CheckpointMismatchError  a checkpoint of another model
  CheckpointRestoreError a named checkpoint does not read back
  NoRestorableCheckpointError  checkpoints of the run, none reads back
  ModelDirBusyError      another trainer holds model_dir
  LeaseLostError         another trainer took model_dir over
  StorageError           storage kept failing or refused access
  NanLossError           the loss became NaN
  HostUnavailableError   a host of a pod (TPUConfig.hosts) is not up, or went
                         away

Importing it sets `TF_USE_LEGACY_KERAS=1` unless already set: TensorFlow
reads it on the first use of `tf.compat.v1.layers` or `tf.keras`, which then
give the legacy Keras (tf-keras) that graph-mode programs, TPUEstimator's
among them, are written for. Import `tpu_harness` before that first use, or
set the variable yourself.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from tpu_harness.checkpoints import CheckpointMismatchError
from tpu_harness.checkpoints import CheckpointRestoreError
from tpu_harness.checkpoints import NoRestorableCheckpointError
from tpu_harness.config import RunConfig
from tpu_harness.config import TPUConfig
from tpu_harness.cpu_loop import CpuEmulationLoop
from tpu_harness.cross_shard import CrossShardOptimizer
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.infeed import InfeedMemoryError
from tpu_harness.infeed import InputShapeError
from tpu_harness.lease import LeaseLostError
from tpu_harness.lease import ModelDirBusyError
from tpu_harness.nan_loss import NanLossError
from tpu_harness.pod import HostUnavailableError
from tpu_harness.runner import Runner
from tpu_harness.spec import ModeKeys
from tpu_harness.spec import ModelSpec
from tpu_harness.storage import StorageError
from tpu_harness.tpu_check import Problem as CompatibilityProblem
from tpu_harness.tpu_check import TPUCompatibilityError
from tpu_harness.tpu_loop import TpuLoop

__all__ = [
    "BuiltLoop",
    "CheckpointMismatchError",
    "CheckpointRestoreError",
    "CompatibilityProblem",
    "CpuEmulationLoop",
    "CrossShardOptimizer",
    "DeviceLoop",
    "HostUnavailableError",
    "InfeedMemoryError",
    "InputShapeError",
    "LeaseLostError",
    "ModelDirBusyError",
    "ModeKeys",
    "ModelSpec",
    "NanLossError",
    "NoRestorableCheckpointError",
    "Runner",
    "RunConfig",
    "StorageError",
    "TPUCompatibilityError",
    "TPUConfig",
    "TpuLoop",
]
