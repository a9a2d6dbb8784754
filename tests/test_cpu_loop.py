"""CpuEmulationLoop: the graph it builds and how one loop runs."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import hooks as th_hooks
import tpu_harness as th
from tpu_harness.loops import device_loop
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.tf_fixtures import ancestors


def test_is_a_device_loop_with_virtual_cpus():
  loop = th.CpuEmulationLoop(num_shards=3, iterations_per_loop=5)
  assert isinstance(loop, th.DeviceLoop)
  assert loop.num_shards == 3
  assert loop.session_config().device_count["CPU"] == 3


@pytest.mark.parametrize("hosts", [(), ("a:1", "b:2")])
def test_sessions_run_one_pass_of_grappler_without_tfg_memory_or_layout(
    hosts):
  loop = th.CpuEmulationLoop(num_shards=2, iterations_per_loop=5,
                             hosts=hosts)
  options = loop.session_config().graph_options.rewrite_options
  assert options.meta_optimizer_iterations == (
      rewriter_config_pb2.RewriterConfig.ONE)
  assert options.disable_tfg_optimizer
  assert options.memory_optimization == (
      rewriter_config_pb2.RewriterConfig.NO_MEM_OPT)
  assert options.layout_optimizer == rewriter_config_pb2.RewriterConfig.OFF


@pytest.mark.parametrize("shards", [1, 2])
def test_train_loop_graph_and_one_run(shards):
  calls = []

  def model_fn(features, labels, mode, params):
    calls.append(tf.compat.v1.get_default_graph().get_name_scope())
    return linear_model_fn(features, labels, mode, params)

  global_step = tf.compat.v1.train.get_or_create_global_step()
  device = th.CpuEmulationLoop(num_shards=shards, iterations_per_loop=4)
  built = device.build_train(model_fn, train_input_fn(),
                             {"batch_size": 8}, skip_steps=0)
  # model_fn is traced once per replica, not once per step.
  assert len(calls) == shards
  op_types = {op.type for op in tf.compat.v1.get_default_graph()
              .get_operations()}
  assert {"While", "StatelessWhile"} & op_types
  assert "FIFOQueueV2" in op_types
  with tf.compat.v1.Session(config=device.session_config()) as session:
    session.run(tf.compat.v1.global_variables_initializer())
    built.infeed.start(session)
    try:
      built.infeed.request(3)
      count = built.infeed.wait()
      results = session.run(built.fetches, {built.iterations: count})
    finally:
      built.infeed.stop()
    assert count == 3
    assert results["end_step"] == 3 == session.run(global_step)
    assert results["outfeed"][device_loop.LOSS].shape == (3,)
    assert np.all(np.isfinite(results["outfeed"][device_loop.LOSS]))


@pytest.mark.parametrize("shards", [1, 2])
def test_one_step_per_loop_runs_without_a_while_loop(shards):
  global_step = tf.compat.v1.train.get_or_create_global_step()
  device = th.CpuEmulationLoop(num_shards=shards, iterations_per_loop=1)
  built = device.build_train(linear_model_fn, train_input_fn(),
                             {"batch_size": 8}, skip_steps=0)
  graph = tf.compat.v1.get_default_graph()
  # What a run of the loop runs (the infeed's own host-side ops aside).
  fetched = [tensor.op.name for tensor in tf.nest.flatten(built.fetches)]
  run = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(),
                                                  fetched)
  op_types = {node.op for node in run.node}
  assert "QueueDequeueV2" in op_types  # The step's input.
  assert not {"While", "StatelessWhile"} & op_types
  # The infeed queue only: no outfeed queue.
  assert [op.type for op in graph.get_operations()].count("FIFOQueueV2") == 1
  with tf.compat.v1.Session(config=device.session_config()) as session:
    session.run(tf.compat.v1.global_variables_initializer())
    built.infeed.start(session)
    try:
      losses = []
      for step in range(1, 4):
        built.infeed.request(1)
        assert built.infeed.wait() == 1
        results = session.run(built.fetches, {built.iterations: 1})
        assert results["end_step"] == step == session.run(global_step)
        losses.append(results["outfeed"][device_loop.LOSS])
    finally:
      built.infeed.stop()
  assert [loss.shape for loss in losses] == [(1,)] * 3
  assert losses[2][0] < losses[0][0]  # It trains.


def test_skip_steps_skips_whole_steps_of_input():
  seen = []

  def model_fn(features, labels, mode, params):
    seen.append(features)
    return linear_model_fn(features, labels, mode, params)

  x = np.arange(40, dtype=np.float32).reshape(10, 4)
  y = np.zeros((10, 1), np.float32)
  tf.compat.v1.train.get_or_create_global_step()
  device = th.CpuEmulationLoop(num_shards=1, iterations_per_loop=10)
  built = device.build_train(model_fn, train_input_fn(x, y, repeat=False),
                             {"batch_size": 2}, skip_steps=3)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    built.infeed.start(session)
    try:
      built.infeed.request(10)
      assert built.infeed.wait() == 2  # 5 steps of input, 3 skipped.
    finally:
      built.infeed.stop()


def test_eval_metrics_from_only_some_replicas_is_a_clear_error():
  calls = []

  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    calls.append(1)
    if len(calls) > 1:  # The second replica forgets its eval_metrics.
      return th.ModelSpec(mode=mode, loss=spec.loss)
    return spec

  tf.compat.v1.train.get_or_create_global_step()
  device = th.CpuEmulationLoop(num_shards=2, iterations_per_loop=2)
  with pytest.raises(ValueError, match="`eval_metrics` must be given by "
                     "every replica or by none"):
    device.build_eval(model_fn, train_input_fn(), {"batch_size": 4})


@pytest.mark.parametrize("iterations", [1, 4])
def test_a_run_steps_after_the_hooks_reads_of_the_global_step(iterations):
  # A hook may fetch TF's shared read tensor or the variable itself
  # (ELECTRA's ETAHook); either way it sees the step from before the run.
  global_step = tf.compat.v1.train.get_or_create_global_step()
  device = th.CpuEmulationLoop(num_shards=1,
                               iterations_per_loop=iterations)
  built = device.build_train(linear_model_fn, train_input_fn(),
                             {"batch_size": 8}, skip_steps=0)
  graph = tf.compat.v1.get_default_graph()
  graph_def = graph.as_graph_def()
  reads = {graph.as_graph_element(global_step).op.name,
           th_hooks.global_step_read().op.name}
  fetched = [tensor.op.name for tensor in tf.nest.flatten(built.fetches)]
  steps = [node.name for node in graph_def.node
           if node.name in ancestors(graph_def, fetched)
           and node.op in ("While", "StatelessWhile", "AssignAddVariableOp")]
  assert steps
  for name in steps:
    assert reads <= ancestors(graph_def, [name]), name
