"""Every error `tpu_harness` raises on purpose, with one base: `Error`.

`except tpu_harness.Error` catches them all. Each also keeps the builtin
base it always had (`ValueError` for bad input, `RuntimeError` for a run
that cannot go on, `ConnectionError` for a peer that does not answer), so
code that catches those still works.
"""

from __future__ import annotations

from typing import Any, Sequence


class Error(Exception):
  """The base of every error tpu_harness raises on purpose."""


# Input.


class InputShapeError(Error, ValueError):
  """The input pipeline's elements do not have the fixed shapes a loop needs."""


class InputEndedEarlyError(Error, RuntimeError):
  """The input had fewer elements than its reported length."""


class InfeedMemoryError(Error, ValueError):
  """The emulated infeed would hold more host memory than allowed."""


# Training.


class NanLossError(Error, RuntimeError):
  """The training loss became NaN or infinite."""


# Checkpoints and the model directory.


class CheckpointMismatchError(Error, ValueError):
  """A checkpoint does not have the variables, shapes or dtypes the model
  has."""


class CheckpointRestoreError(Error, RuntimeError):
  """Restoring a checkpoint failed because its files do not read back.

  Attributes:
    checkpoint: its prefix.
    reason: what reading it found.
  """

  def __init__(self, checkpoint: str, reason: str):
    self.checkpoint = checkpoint
    self.reason = reason
    super().__init__(f"Checkpoint {checkpoint} does not read back "
                     f"({reason}).")


class NoRestorableCheckpointError(Error, RuntimeError):
  """`model_dir` holds checkpoints of the run, but none reads back."""


class CheckpointRotatedError(Error, RuntimeError):
  """Evaluation or prediction beside a trainer: every checkpoint chosen was
  deleted by the trainer's rotation (`keep_checkpoint_max`) before it could
  be restored, too many times in a row."""


class ModelDirBusyError(Error, RuntimeError):
  """Another trainer holds the lease on `model_dir`."""


class LeaseLostError(Error, RuntimeError):
  """Another trainer took over this trainer's lease on `model_dir`."""


class StorageError(Error, RuntimeError):
  """Storage kept failing after retries, or refused access."""


# TPUs and pods.


class TPUCompatibilityError(Error, ValueError):
  """The model cannot run on a TPU; `problems` says why, each reason once.

  Attributes:
    problems: the `tpu_harness.CompatibilityProblem`s found.
  """

  def __init__(self, problems: Sequence[Any]):
    self.problems = list(problems)
    lines = "\n".join(f"  {problem}" for problem in self.problems)
    super().__init__(
        f"The model cannot run on a TPU: {len(self.problems)} problem(s) "
        f"found by compiling one replica's step with XLA on CPU (turn the "
        f"check off with RunConfig(check_tpu_compatibility=False) or "
        f"--nocheck_tpu):\n{lines}")


class TPUNotFoundError(Error, ValueError):
  """The Cloud TPU API does not know a TPU of that name."""


class TPUNotReadyError(Error, RuntimeError):
  """The TPU did not become READY and HEALTHY in time."""


class NoTPUError(Error, RuntimeError):
  """The session target has no TPU devices."""


class TPUUnreachableError(Error, ConnectionError):
  """Nothing accepts connections at the TPU worker's gRPC address."""


class HostUnavailableError(Error, ConnectionError):
  """A host of the pod does not accept connections."""
