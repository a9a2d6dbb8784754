"""summaries: the tf.compat.v1.summary ops model_fn makes reach model_dir's
events, as Estimator wrote them, from inside the device loop."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import NUM_FEATURES
from support.runner_models import data
from support.runner_models import train_input_fn
from tpu_harness.loops import summaries


@pytest.mark.parametrize("first, last, every, last_step, expected", [
    (1, 2, 4, 6, False),  # No multiple of 4 among steps 1..2.
    (3, 4, 4, 6, True),
    (4, 4, 4, 100, True),
    (5, 5, 4, 100, False),
    (5, 6, 4, 6, True),  # The call's last step.
    (1, 100, 100, 1000, True),
    (101, 150, 100, 1000, False),
    (199, 201, 100, 1000, True),
    (201, 299, 100, 1000, False),
])
def test_a_loop_writes_summaries_where_a_multiple_or_the_end_falls(
    first, last, every, last_step, expected):
  assert summaries.due(first, last, every, last_step) == expected


def _summarizing_model_fn(features, labels, mode, params):
  """A linear model whose `model_fn` makes a scalar and a histogram
  summary, as Estimator programs do."""
  del params  # Unused.
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
  tf.compat.v1.summary.scalar("loss_copy", loss)
  tf.compat.v1.summary.histogram("features", features)
  # An image (attributes to copy) and a merge of summaries kept out of the
  # collection (summary ops made again under it).
  tf.compat.v1.summary.image(
      "images", tf.reshape(features, [-1, 2, 2, 1]), max_outputs=1)
  tf.compat.v1.summary.merge(
      [tf.compat.v1.summary.scalar("first_label", labels[0, 0],
                                   collections=[]),
       tf.compat.v1.summary.scalar("w_sum", tf.reduce_sum(w),
                                   collections=[])],
      collections=[tf.compat.v1.GraphKeys.SUMMARIES])
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.1))
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step()))


def _events(model_dir):
  """{tag: [(step, value), ...]} of the summaries in `model_dir`'s events
  (a histogram's value: its count; an image's: its width)."""
  found = {}
  for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = (value.histo.num if value.HasField("histo")
                  else value.image.width if value.HasField("image")
                  else value.simple_value)
        found.setdefault(value.tag, []).append((event.step, number))
  return {tag: sorted(points) for tag, points in found.items()}


@pytest.mark.parametrize("shards", [1, 2])
def test_model_fn_summaries_are_written_at_a_loops_last_step(
    tmp_path, shards, step_graph):
  runner = th.Runner(
      _summarizing_model_fn,
      th.RunConfig(str(tmp_path), iterations_per_loop=step_graph,
                   save_summary_steps=4, tpu=th.TPUConfig(num_shards=shards)),
      train_batch_size=4 * shards)
  x, y = data(n=64)
  runner.train(train_input_fn(x, y), max_steps=6)
  events = _events(str(tmp_path))
  # Loops of one step: steps 4 (a multiple of save_summary_steps) and 6
  # (the last). Loops of three (1..3, 4..6): the second loop's last step.
  steps = [4, 6] if step_graph == 1 else [6]
  assert [step for step, _ in events["loss_copy"]] == steps
  # One replica's, once per step written, under model_fn's own names.
  assert set(events) == {"loss", "loss_copy", "features", "images/image",
                         "first_label", "w_sum"}
  assert events["features"] == [(step, 4 * NUM_FEATURES) for step in steps]
  assert events["images/image"] == [(step, 2) for step in steps]
  # The replica built first is the last (each replica takes its own batch
  # of 4 in turn): its batch's first label.
  first_labels = {step: y[((step - 1) * shards + shards - 1) * 4 % 64, 0]
                  for step in steps}
  for step, value in events["first_label"]:
    np.testing.assert_allclose(value, first_labels[step], rtol=1e-6)
  # The step's own loss (the mean of the replicas' equals replica 0's on
  # one replica only).
  losses = dict(events["loss"])
  for step, value in events["loss_copy"]:
    if shards == 1:
      np.testing.assert_allclose(value, losses[step], rtol=1e-6)
    else:
      assert np.isfinite(value)


def _loss_summarizing_model_fn(features, labels, mode, params):
  """A linear model whose `model_fn` writes a summary named `loss` itself,
  as many programs do."""
  del params  # Unused.
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
  tf.compat.v1.summary.scalar("loss", loss * 0 - 7.0)  # Told apart by value.
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.1)
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step()))


def test_a_loss_of_model_fns_own_is_not_written_twice(tmp_path, step_graph):
  runner = th.Runner(
      _loss_summarizing_model_fn,
      th.RunConfig(str(tmp_path), iterations_per_loop=step_graph,
                   save_summary_steps=2),
      train_batch_size=4)
  runner.train(train_input_fn(*data(n=64)), max_steps=6)
  points = _events(str(tmp_path))["loss"]
  # model_fn's at the steps it is computed (every loop's last step that is
  # due), the harness's at the other steps due: one value per step.
  theirs = [2, 4, 6] if step_graph == 1 else [3, 6]
  ours = [] if step_graph == 1 else [2, 4]
  assert [step for step, value in points if value == -7.0] == theirs
  assert [step for step, value in points if value != -7.0] == ours
