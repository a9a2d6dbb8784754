"""One evaluation: a checkpoint restored, its loops run, its metrics written.

Per eval loop (one `Session.run` of up to `iterations_per_loop` steps, run
by `host_loop.run_loops`)::

  infeed.wait(); infeed.request(next k)   # the host fills while it runs
  session.run(loop, iterations=k)         # k steps on the device
  trim the outfeed's padding; run host_call; update the metrics on the host

until `steps` are done or the input ends. Then the metrics' values and the
global step are read, the scalars written as a summary to the eval
directory (`model_dir/eval`, or `model_dir/eval_<name>`) at that step, and
returned. `tpu_harness.Runner.evaluate` checks the arguments; this module
runs the session, which `restore.restored_for` restores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from hooks import paths
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import storage
from tpu_harness._run import host_loop
from tpu_harness._run import restore
from tpu_harness._run.job import Job
from tpu_harness.loops import device_loop
from tpu_harness.loops.device_loop import BuiltLoop


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """One `evaluate()` call.

  Attributes:
    input_fn: the evaluation `input_fn`.
    steps: eval steps; None: until the input ends.
    checkpoint_path: the checkpoint to evaluate; None: the newest of the
      run in `model_dir`.
    name: the eval's name: its events go to `model_dir/eval_<name>` (None:
      `model_dir/eval`).
    batch_size: global examples per step.
    hooks: the caller's SessionRunHooks.
  """
  input_fn: Callable[..., Any]
  steps: Optional[int]
  checkpoint_path: Optional[str]
  name: Optional[str]
  batch_size: int
  hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]


def evaluate(job: Job, request: EvalRequest) -> Dict[str, Any]:
  """Evaluates the checkpoint; returns its metrics, `loss` and
  `global_step`.

  Raises:
    Exception: what `tpu_harness.Runner.evaluate` documents.
  """
  model_dir = job.config.model_dir
  directory = paths.join(
      model_dir, f"eval_{request.name}" if request.name else "eval")

  def prepare():
    # Before any work, so as not to evaluate and then fail to write.
    contents.prepare_model_dir(
        directory, label=f"The eval directory {directory!r} (under "
        f"`model_dir`, where evaluate writes its results)")

  with restore.restored_for(
      job, lambda: job.device.build_eval(job.model_fn, request.input_fn,
                                         job.params, request.steps),
      request.checkpoint_path, request.hooks, prepare) as (loop, session,
                                                           checkpoint):
    ran = _eval_loops(job, loop, session, request.steps)
    metrics, step = _read_metrics(loop, session)
    if ran == 0:
      raise ValueError("`input_fn` gave no complete eval step (each step "
                       f"needs {job.device.num_shards} batches of "
                       f"{request.batch_size // job.device.num_shards}).")
    writer = storage.events_writer(directory, model_dir)
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=key, simple_value=float(value))
        for key, value in metrics.items() if np.ndim(value) == 0]), int(step))
    writer.flush()
  results = {key: _python_value(value) for key, value in metrics.items()}
  results["global_step"] = int(step)
  logging.info("Eval of %s over %d steps: %s", checkpoint, ran, results)
  return results


def _eval_loops(job: Job, loop: BuiltLoop, session,
                steps: Optional[int]) -> int:
  """Runs the eval loops, each loop's metrics updated on the host; returns
  the steps run."""
  ran = 0
  try:
    for count, results, _ in host_loop.run_loops(
        loop, session, steps, job.config.iterations_per_loop, job.clock):
      # Values of batches of no fixed size come back padded: trimmed.
      outfeed = device_loop.trimmed(results["outfeed"], count)
      host_loop.run_host_call(loop, outfeed, count)
      loop.metrics.update(outfeed, count)
      ran += count
  finally:
    loop.infeed.stop()
  return ran


def _read_metrics(loop: BuiltLoop, session) -> Tuple[Dict[str, Any], Any]:
  """(the metrics' values, the global step), read once the loops ran."""
  # On the session itself: hooks run with each loop, not with this read
  # (a hook fetching a loop's tensors would run another loop).
  return session.run_step_fn(
      lambda step_context: step_context.session.run(
          (loop.metrics.values, tf.compat.v1.train.get_global_step())))


def _python_value(value: Any) -> Any:
  return value.item() if isinstance(value, np.generic) or (
      isinstance(value, np.ndarray) and value.ndim == 0) else value
