"""One prediction: a checkpoint restored, its loops run, the predictions
yielded in input order.

The loops run until the input ends (`host_loop.run_loops`). A predict
loop's outfeed holds, per step and replica, a batch of predictions and its
count of real rows (`VALID`: the input's last batch is padded for the
device); `rows` drops the padding, giving one item per example, and
`batches` regroups them by input batch. `tpu_harness.Runner.predict` checks
the arguments; this module runs the session, which `restore.restored_for`
restores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tpu_harness._run import host_loop
from tpu_harness._run import restore
from tpu_harness._run.job import Job
from tpu_harness.loops.device_loop import SINGLE_PREDICTION
from tpu_harness.loops.device_loop import VALID


@dataclasses.dataclass(frozen=True)
class PredictRequest:
  """One `predict()` call.

  Attributes:
    input_fn: the prediction `input_fn`.
    checkpoint_path: the checkpoint to predict with; None: the newest of
      the run in `model_dir`.
    hooks: the caller's SessionRunHooks.
    yield_single_examples: one item per example; else one per input batch.
  """
  input_fn: Callable[..., Any]
  checkpoint_path: Optional[str]
  hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]
  yield_single_examples: bool = True


def predict(job: Job, request: PredictRequest) -> Iterator[Any]:
  """Yields the predictions, in input order.

  Raises:
    Exception: what `tpu_harness.Runner.predict` documents.
  """
  with restore.restored_for(
      job, lambda: job.device.build_predict(job.model_fn, request.input_fn,
                                            job.params),
      request.checkpoint_path, request.hooks) as (loop, session, _):
    try:
      for _, results, _ in host_loop.run_loops(
          loop, session, None, job.config.iterations_per_loop, job.clock):
        examples = rows(results["outfeed"])
        if request.yield_single_examples:
          yield from examples
        else:
          yield from batches(examples, results["outfeed"])
    finally:
      loop.infeed.stop()


def rows(outfeed: Mapping[str, np.ndarray]) -> Iterator[Any]:
  """One `{name: value}` per real example of a predict loop's outfeed
  (values shaped [steps, replicas, rows, ...]; padding rows dropped), or
  one value per example where the predictions were a single tensor."""
  valid = outfeed[VALID]
  names = [name for name in outfeed if name != VALID]
  single = names == [SINGLE_PREDICTION]
  for step in range(valid.shape[0]):
    for shard in range(valid.shape[1]):
      for row in range(int(valid[step, shard])):
        if single:
          yield outfeed[SINGLE_PREDICTION][step, shard, row]
        else:
          yield {name: outfeed[name][step, shard, row] for name in names}


def batches(examples: Iterator[Any], outfeed: Mapping[str, np.ndarray]
            ) -> Iterator[Any]:
  """The `rows` of a predict loop's outfeed regrouped by input batch (one
  step's replicas together), each value stacked: `{name: [rows, ...]}`, or
  an array for a single-tensor prediction."""
  valid = outfeed[VALID]
  examples = iter(examples)
  for step in range(valid.shape[0]):
    count = int(np.sum(valid[step]))
    if not count:
      continue
    group = [next(examples) for _ in range(count)]
    if isinstance(group[0], dict):
      yield {name: np.stack([row[name] for row in group])
             for name in group[0]}
    else:
      yield np.stack(group)
