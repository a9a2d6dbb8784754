"""The `tf.compat.v1.summary` ops `model_fn` makes, in a training loop.

Estimator, and TPUEstimator off TPU, wrote the summaries `model_fn` makes
(`tf.compat.v1.summary.scalar`, `histogram`, `image`, ...: the graph's
`SUMMARIES` collection) into `model_dir`'s events every
`save_summary_steps`. In a device loop they are tensors of the loop's body,
which no session can fetch. Here the summary ops of one replica (the one
built first, whose tags are `model_fn`'s names) are made again in a
`tf.cond`, so that they run only at the last step of a run the host asks
them of (`summarize`, fed to that run alone: a loop that reaches a multiple
of `save_summary_steps`, or the call's last step, see `due`), merged into
one serialized `Summary` that leaves with the step's other values (an empty
string at every other step); the host writes it at that step. A write thus
costs one step's summaries, as Estimator's did, and shows the values of the
loop's last step, as the spec's hooks see them. What the summaries read (the
histogram's tensor, the image) is computed with the step either way; only
the summary ops themselves wait for the step.
"""

from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

SUMMARY = "summary"

# The ops tf.compat.v1.summary makes: made again inside the cond. Their
# other inputs (tags, values) come from the step.
_SUMMARY_OPS = frozenset({
    "ScalarSummary", "HistogramSummary", "ImageSummary", "AudioSummary",
    "AudioSummaryV2", "TensorSummary", "TensorSummaryV2", "MergeSummary"})


def due(first: int, last: int, every: int, last_step: int) -> bool:
  """Whether a loop over global steps `first`..`last` (after each step)
  writes summaries: a multiple of `every` is among them, or `last` is the
  call's `last_step` (the rule of the loss summary)."""
  return last // every > (first - 1) // every or last == last_step


def tags(serialized: bytes) -> frozenset:
  """The tags of a serialized `Summary` (as a loop's `SUMMARY` holds)."""
  summary = tf.compat.v1.Summary()
  summary.ParseFromString(serialized)
  return frozenset(value.tag for value in summary.value)


class LoopSummaries:
  """One replica's summaries of a training step, computed at one step per
  run at most."""

  def __init__(self):
    with tf.init_scope():  # Fed from outside the loop.
      self.wanted = tf.compat.v1.placeholder_with_default(
          False, [], name="summarize")

  def outfeed(self, summaries: List[tf.Tensor], last: tf.Tensor
              ) -> Dict[str, tf.Tensor]:
    """{SUMMARY: the merged `summaries` at the run's last step (`last`:
    whether the step being built is) when the run's feed asks for them,
    "" otherwise}."""
    return {SUMMARY: tf.cond(tf.logical_and(self.wanted, last),
                             lambda: _made_again(summaries),
                             lambda: tf.constant(""))}

  def feed(self) -> Dict[tf.Tensor, bool]:
    """The feed of a run whose last step writes summaries."""
    return {self.wanted: True}


def _made_again(summaries: List[tf.Tensor]) -> tf.Tensor:
  """`summaries` merged, their summary ops made again in the default graph
  (a cond's branch) on the same inputs."""
  graph = tf.compat.v1.get_default_graph()
  made = {}

  def again(tensor: tf.Tensor) -> tf.Tensor:
    op = tensor.op
    if op.type not in _SUMMARY_OPS:
      return tensor
    if op not in made:
      with tf.device(op.device):
        made[op] = graph.create_op(
            op.type, [again(t) for t in op.inputs],
            [t.dtype for t in op.outputs], name=op.name.rsplit("/", 1)[-1],
            attrs={key: value for key, value in op.node_def.attr.items()
                   if not key.startswith("_")})
    return made[op].outputs[tensor.value_index]

  return tf.compat.v1.summary.merge([again(t) for t in summaries])
