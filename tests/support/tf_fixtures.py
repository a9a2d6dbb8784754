"""Small real graphs and recording fakes shared by the hook tests."""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

import hooks


@dataclasses.dataclass
class LoopGraph:
  """A train op that runs a while loop of SGD steps in one Session.run."""
  train_op: tf.Operation
  weight: tf.Variable
  global_step: tf.Variable
  iterations: tf.Tensor  # placeholder with a default of steps_per_run


def build_loop_graph(steps_per_run: int) -> LoopGraph:
  """Builds, in the default graph, a loop of `steps_per_run` SGD steps.

  Each iteration minimizes (w - 3)^2 by one gradient step and adds 1 to the
  global step, so one run advances the global step by the fed `iterations`
  (default `steps_per_run`). The loop runs after the shared global-step read,
  so hooks see the step from before the run.
  """
  global_step = tf.compat.v1.train.get_or_create_global_step()
  weight = tf.compat.v1.get_variable(
      "w", initializer=tf.constant(0.0), use_resource=True)
  iterations = tf.compat.v1.placeholder_with_default(
      tf.constant(steps_per_run, tf.int64), shape=[], name="iterations")
  read = hooks.global_step_read()

  def body(i):
    update = weight.assign_sub(0.1 * 2.0 * (weight.read_value() - 3.0))
    with tf.control_dependencies([update]):
      bump = global_step.assign_add(1)
    with tf.control_dependencies([bump]):
      return i + 1

  with tf.control_dependencies([read]):
    loop = tf.while_loop(lambda i: i < iterations, body,
                         [tf.constant(0, tf.int64)])
  train_op = tf.group(loop, name="train_loop")
  return LoopGraph(train_op, weight, global_step, iterations)


class RecordingListener(hooks.CheckpointSaverListener):
  """Counts every callback, in order, as (name, step) pairs."""

  def __init__(self, stop_after_save_at: Optional[int] = None):
    self.calls: List[Tuple[str, Optional[int]]] = []
    self._stop_at = stop_after_save_at

  def begin(self):
    self.calls.append(("begin", None))

  def before_save(self, session, global_step_value):
    self.calls.append(("before_save", int(global_step_value)))

  def after_save(self, session, global_step_value):
    self.calls.append(("after_save", int(global_step_value)))
    return self._stop_at is not None and global_step_value >= self._stop_at

  def end(self, session, global_step_value):
    self.calls.append(("end", int(global_step_value)))

  def saved_steps(self) -> List[int]:
    return [step for name, step in self.calls if name == "after_save"]


def checkpoint_steps(checkpoint_dir: str) -> List[int]:
  """Steps of every checkpoint whose data is on disk, read via the index."""
  steps = []
  for index in glob.glob(os.path.join(checkpoint_dir, "*.index")):
    prefix = index[:-len(".index")]
    reader = tf.train.load_checkpoint(prefix)
    steps.append(int(reader.get_tensor("global_step")))
  return sorted(steps)


def event_records(log_dir: str) -> List[tf.compat.v1.Event]:
  """All events of all event files in `log_dir`, in file order."""
  events = []
  for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.*"))):
    events.extend(tf.compat.v1.train.summary_iterator(path))
  return events


def checkpoint_log_steps(log_dir: str) -> List[int]:
  """Steps of SessionLog.CHECKPOINT events."""
  return [e.step for e in event_records(log_dir)
          if e.HasField("session_log")
          and e.session_log.status == tf.compat.v1.SessionLog.CHECKPOINT]


def run_loops(hook_list: Sequence[tf.compat.v1.train.SessionRunHook],
              graph: LoopGraph,
              increments: Sequence[int],
              checkpoint_dir: Optional[str] = None) -> int:
  """Runs one Session.run per entry of `increments` (each feeds that many
  iterations) in a MonitoredTrainingSession; returns the final global step.

  `checkpoint_dir` restores from there (the session's own saving is off).
  """
  with tf.compat.v1.train.MonitoredTrainingSession(
      checkpoint_dir=checkpoint_dir, hooks=list(hook_list),
      save_checkpoint_secs=None, save_checkpoint_steps=None,
      save_summaries_steps=None, save_summaries_secs=None,
      log_step_count_steps=None) as session:
    for increment in increments:
      if session.should_stop():
        break
      session.run(graph.train_op, feed_dict={graph.iterations: increment})
    return int(session.run_step_fn(
        lambda step_context: step_context.session.run(graph.global_step)))


def ancestors(graph_def, names):
  """Nodes `names` depend on, through data and control inputs."""
  inputs = {node.name: [name.lstrip("^").split(":")[0]
                        for name in node.input] for node in graph_def.node}
  seen, stack = set(), list(names)
  while stack:
    for name in inputs[stack.pop()]:
      if name not in seen:
        seen.add(name)
        stack.append(name)
  return seen
