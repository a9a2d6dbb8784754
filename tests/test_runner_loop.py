"""Runner: loop accounting and hooks, summaries and progress, input never
read beyond need."""

import logging as std_logging
import threading

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from tpu_harness._infeed.layout import InfeedLayout
from support.runner_models import RecordingHook
from support.runner_models import data
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.tf_fixtures import RecordingListener
from support.tf_fixtures import checkpoint_steps
from support.tf_fixtures import event_records
from support.runner_fixtures import make_runner
from support.runner_fixtures import scalars
from support.runner_fixtures import tensor_scalars


# ----------------------------------------------------------------------------
# Loop accounting and hooks.


@pytest.mark.parametrize("ipl,max_steps,expected_steps", [
    (10, 45, [10, 20, 30, 40, 45]),
    (10, 40, [10, 20, 30, 40]),
    (1, 3, [1, 2, 3]),
    (100, 7, [7]),
])
def test_each_run_advances_iterations_per_loop_and_stops_exactly(
    tmp_path, ipl, max_steps, expected_steps):
  hook = RecordingHook()
  make_runner(tmp_path, ipl=ipl).train(train_input_fn(), max_steps=max_steps,
                                       hooks=[hook])
  assert hook.steps == expected_steps
  runs = len(expected_steps)
  assert hook.counts == {"begin": 1, "after_create_session": 1,
                         "before_run": runs, "after_run": runs, "end": 1}


def test_a_device_loop_with_another_default_is_fed_every_count(tmp_path):
  # The runner feeds `iterations` only when the count differs from the
  # loop's own default, which need not be the runner's iterations_per_loop.
  hook = RecordingHook()
  th.Runner(linear_model_fn,
            th.RunConfig(str(tmp_path), iterations_per_loop=4),
            train_batch_size=32,
            device_loop=th.CpuEmulationLoop(num_shards=1,
                                            iterations_per_loop=8),
            ).train(train_input_fn(), max_steps=10, hooks=[hook])
  assert hook.steps == [4, 8, 10]


def test_checkpoints_at_expected_steps_with_listeners(tmp_path):
  listener = RecordingListener()
  make_runner(tmp_path, ipl=10, save_steps=20).train(
      train_input_fn(), max_steps=45, saving_listeners=[listener])
  assert listener.saved_steps() == [0, 20, 40, 45]
  assert checkpoint_steps(str(tmp_path)) == [0, 20, 40, 45]
  assert listener.calls[-1] == ("end", 45)
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-45")


def test_keep_checkpoint_max_rotates_old_checkpoints(tmp_path):
  runner = make_runner(tmp_path, ipl=10, save_steps=10, keep_checkpoint_max=2)
  runner.train(train_input_fn(), max_steps=50)
  assert checkpoint_steps(str(tmp_path)) == [40, 50]
  # The next run's saves rotate the earlier run's checkpoints out too.
  runner.train(train_input_fn(), max_steps=70)
  assert checkpoint_steps(str(tmp_path)) == [60, 70]


def test_saving_listener_can_stop_training(tmp_path):
  listener = RecordingListener(stop_after_save_at=20)
  make_runner(tmp_path).train(train_input_fn(), max_steps=100,
                              saving_listeners=[listener])
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-20")


def test_steps_counts_from_the_current_step(tmp_path):
  runner = make_runner(tmp_path)
  runner.train(train_input_fn(), steps=15)
  runner.train(train_input_fn(), steps=15)
  assert runner.latest_checkpoint().endswith("model.ckpt-30")


def test_train_past_max_steps_does_nothing(tmp_path):
  runner = make_runner(tmp_path)
  runner.train(train_input_fn(), max_steps=20)
  hook = RecordingHook()
  runner.train(train_input_fn(), max_steps=10, hooks=[hook])
  assert hook.counts["begin"] == 0
  assert runner.latest_checkpoint().endswith("model.ckpt-20")


def test_input_ending_mid_loop_stops_at_the_last_full_step(tmp_path):
  x, y = data(n=100)
  hook = RecordingHook()
  # 100 examples / 32 per step = 3 full steps; loops of 2: 2 + 1.
  make_runner(tmp_path, ipl=2).train(train_input_fn(x, y, repeat=False),
                                     max_steps=50, hooks=[hook])
  assert hook.steps == [2, 3]
  assert checkpoint_steps(str(tmp_path)) == [0, 3]  # end() saves step 3.


# Every element counts as large: input of known length is streamed.
STREAMED = InfeedLayout(per_element_bytes=1)


def test_streamed_input_ending_mid_loop_stops_at_the_last_full_step(
    tmp_path):
  x, y = data(n=100)
  hook = RecordingHook()
  make_runner(tmp_path, ipl=2, infeed_layout=STREAMED).train(
      train_input_fn(x, y, repeat=False), max_steps=50, hooks=[hook])
  assert hook.steps == [2, 3]
  assert checkpoint_steps(str(tmp_path)) == [0, 3]


def test_streamed_input_that_fails_mid_training_is_an_error(tmp_path):
  x, y = data()

  def input_fn(params):
    def check(index, element):
      with tf.control_dependencies([tf.debugging.assert_less(
          index, tf.constant(12, tf.int64), message="bad record")]):
        return tf.nest.map_structure(tf.identity, element)
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
        params["batch_size"], drop_remainder=True).enumerate().map(check)

  # Endless input, streamed; its 13th batch fails inside the third loop.
  # (A MonitoredSession would take the closed queue for the input's end
  # and stop quietly.)
  with pytest.raises(tf.errors.InvalidArgumentError, match="bad record"):
    make_runner(tmp_path, ipl=5, save_steps=5, infeed_layout=STREAMED).train(
        input_fn, max_steps=40)
  assert max(checkpoint_steps(str(tmp_path))) == 10


# ----------------------------------------------------------------------------
# Summaries and progress.


def test_the_events_hold_the_graph_that_ran_once(tmp_path):
  make_runner(tmp_path, ipl=5).train(train_input_fn(), max_steps=5)
  tf.compat.v1.summary.FileWriterCache.clear()
  graphs = [tf.compat.v1.GraphDef.FromString(event.graph_def)
            for event in event_records(str(tmp_path))
            if event.HasField("graph_def")]
  # The writer's own, made before the graph was final, is empty.
  assert [len(graph.node) > 0 for graph in graphs] == [False, True]
  assert any(node.name.startswith("device_loop")
             for node in graphs[-1].node)


@pytest.mark.parametrize("shards", [1, 2])
def test_loss_and_host_call_scalars_land_at_their_steps(tmp_path, shards):
  host_dir = tmp_path / "host"
  make_runner(tmp_path, ipl=10, save_summary_steps=5, log_step_count_steps=10,
              shards=shards, params={"host_call": str(host_dir)}).train(
              train_input_fn(), max_steps=22)
  losses = dict(scalars(tmp_path, "loss"))
  assert sorted(losses) == [5, 10, 15, 20, 22]
  # tf2 summaries written by the host_call's own ops, once per step.
  host_losses = dict(tensor_scalars(host_dir, "host/loss"))
  assert sorted(host_losses) == list(range(1, 23))
  # The host_call saw the same per-step loss the runner recorded (the mean
  # over the replicas' losses, concatenated on axis 0).
  for step, loss in losses.items():
    np.testing.assert_allclose(host_losses[step], loss, rtol=1e-6)
  w0 = [v for _, v in sorted(tensor_scalars(host_dir, "host/w0"))]
  assert len(w0) == 22 and w0 == sorted(w0)  # w[0] climbs toward 1.0.
  assert [s for s, _ in scalars(tmp_path, "global_step/sec")]
  assert [s for s, _ in scalars(tmp_path, "examples/sec")]


@pytest.mark.parametrize("ipl, log_every, max_steps, expected", [
    (10, 10, 25, [10, 20, 25]),  # One per loop.
    (10, 100, 25, [10, 25]),  # The first loop and the last.
    (2, 6, 13, [2, 6, 12, 13]),  # Loops 5..6 and 11..12 reach a multiple.
    (4, 6, 16, [4, 8, 12, 16]),  # 5..8 holds 6, 9..12 holds 12.
    (1, 5, 12, [1, 5, 10, 12]),  # One step per loop.
])
def test_a_progress_line_at_the_first_loop_then_every_log_step_count_steps(
    tmp_path, caplog, ipl, log_every, max_steps, expected):
  with caplog.at_level(std_logging.INFO, logger="absl"):
    make_runner(tmp_path, ipl=ipl, log_step_count_steps=log_every).train(
        train_input_fn(), max_steps=max_steps)
  lines = [r.getMessage() for r in caplog.records
           if "steps/sec" in r.getMessage() and "loss" in r.getMessage()]
  assert [int(line.split(":")[0].split()[1]) for line in lines] == expected
  assert all("examples/sec" in line for line in lines)


def test_train_op_not_advancing_global_step_is_an_error(tmp_path):

  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [4, 1])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  with pytest.raises(RuntimeError, match="must advance it by exactly one"):
    runner.train(train_input_fn(), max_steps=5)


# ----------------------------------------------------------------------------
# Input never read beyond need; host memory for it bounded.


def test_a_huge_iterations_per_loop_reads_only_the_steps_needed(tmp_path):
  read = []

  def record(i, features, labels):
    read.append(int(i))
    return features, labels

  def input_fn(params):
    batch = params["batch_size"]
    # The recording map comes last: tf.data does not parallelize (and so
    # read ahead through) a py_function.
    return tf.data.Dataset.range(10**6).map(
        lambda i: (i, tf.fill([batch, 4], 0.5), tf.fill([batch, 1], 1.0))
    ).map(lambda i, x, y: tuple(
        tf.ensure_shape(t, s) for t, s in zip(
            tf.py_function(record, [i, x, y], [tf.float32, tf.float32]),
            [[batch, 4], [batch, 1]])))

  hook = RecordingHook()
  make_runner(tmp_path, ipl=10**9, save_steps=100).train(input_fn, max_steps=10,
                                                         hooks=[hook])
  assert hook.steps == [10]
  assert sorted(read) == list(range(10))


def test_the_first_loops_input_is_read_while_the_first_save_runs(tmp_path):
  # Set-up speed: the first loop's input is asked for as the session
  # starts, so the host reads it (e.g. filling a shuffle buffer) while the
  # session's first checkpoint is saved, not after.
  read = threading.Event()

  def record(features, labels):
    read.set()
    return features, labels

  def input_fn(params):
    return train_input_fn()(params).map(lambda x, y: tuple(
        tf.ensure_shape(t, s.shape) for t, s in zip(
            tf.py_function(record, [x, y], [tf.float32, tf.float32]),
            [x, y])))

  class WaitForInput(tf.compat.v1.train.CheckpointSaverListener):
    seen_at_first_save = None

    def before_save(self, session, global_step_value):
      if self.seen_at_first_save is None:
        # Bounded: without the early request nothing reads until the
        # first loop, after this save.
        self.seen_at_first_save = read.wait(timeout=60)

  listener = WaitForInput()
  make_runner(tmp_path, ipl=5).train(input_fn, max_steps=10,
                                     saving_listeners=[listener])
  assert listener.seen_at_first_save is True
  assert checkpoint_steps(str(tmp_path))[-1] == 10


def test_infeed_memory_limit_names_iterations_per_loop_and_batch(tmp_path):
  with pytest.raises(th.InfeedMemoryError) as info:
    make_runner(tmp_path, ipl=1000, batch=32,
                max_infeed_bytes=2**20).train(train_input_fn(), max_steps=5000)
  message = str(info.value)
  assert "3 x 1000 steps x 640 B = 1.8 MiB" in message
  assert "iterations_per_loop=1000, train_batch_size=32" in message
  assert "over the limit of 1.0 MiB (RunConfig.max_infeed_bytes)" in message
  assert not checkpoint_steps(str(tmp_path))
