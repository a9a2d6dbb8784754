"""TpuLoop: the TPU training graph builds on CPU with the expected ops and
shapes. (It cannot run here: there is no TPU; see the module docstring.)"""

import collections

import pytest
import tensorflow as tf

import tpu_harness as th
from runner_models import linear_model_fn
from runner_models import train_input_fn


def _ops(graph_def):
  """Op types and nodes of the graph and of every function in it."""
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes += list(function.node_def)
  return nodes


def _build(shards=2, batch=8, params=None):
  tf.compat.v1.train.get_or_create_global_step()
  loop = th.TpuLoop(num_shards=shards, iterations_per_loop=4)
  built = loop.build_train(linear_model_fn, train_input_fn(),
                           dict(params or {}, batch_size=batch // shards),
                           skip_steps=0)
  return built, _ops(tf.compat.v1.get_default_graph().as_graph_def())


def test_train_graph_has_the_tpu_parts_with_per_core_shapes():
  built, nodes = _build(shards=2, batch=8)
  by_type = collections.defaultdict(list)
  for node in nodes:
    by_type[node.op].append(node)
  # Infeed: one enqueue per core, each with that core's batch of 4.
  enqueues = by_type["InfeedEnqueueTuple"]
  assert sorted(n.attr["device_ordinal"].i for n in enqueues) == [0, 1]
  for node in enqueues:
    shapes = [[d.size for d in s.dim] for s in node.attr["shapes"].list.shape]
    assert shapes == [[4, 4], [4, 1]]
  dequeue, = by_type["InfeedDequeueTuple"]
  assert [[d.size for d in s.dim] for s in dequeue.attr["shapes"].list.shape
          ] == [[4, 4], [4, 1]]
  # Replication over 2 cores, gradients summed across them.
  metadata, = by_type["TPUReplicateMetadata"]
  assert metadata.attr["num_replicas"].i == 2
  assert by_type["CrossReplicaSum"]
  # Outfeed: sent every step, received per core on the host.
  assert by_type["OutfeedEnqueueTuple"]
  assert sorted(n.attr["device_ordinal"].i
                for n in by_type["OutfeedDequeueTuple"]) == [0, 1]
  assert by_type["ConfigureDistributedTPU"] == []  # Built by the hook.
  hook, = built.hooks
  assert isinstance(hook, th.tpu_loop.TpuSystemHook)
  hook.begin()
  assert [n for n in tf.compat.v1.get_default_graph().get_operations()
          if n.type == "ConfigureDistributedTPU"]
  # What the runner fetches: per-step losses and the step after the loop.
  assert built.fetches["outfeed"]["loss"].shape.as_list() == [None]
  assert built.fetches["end_step"].shape.rank == 0
  assert built.iterations.op.type == "PlaceholderWithDefault"
  assert tf.get_static_value(built.iterations.op.inputs[0]) == 4


def test_host_call_tensors_go_through_the_outfeed(tmp_path):
  built, nodes = _build(shards=2, batch=8, params={"host_call": str(
      tmp_path)})
  outfeed = built.fetches["outfeed"]
  assert sorted(outfeed) == ["host_call/0", "host_call/1", "host_call/2",
                             "loss"]
  # [1] per core; 2 cores -> [steps, 2].
  assert outfeed["host_call/1"].shape.as_list() == [None, 2]
  assert built.host_call is not None and built.host_call in built.hooks
  sent, = [n for n in nodes if n.op == "OutfeedEnqueueTuple"]
  assert len(sent.attr["dtypes"].list.type) == 4
  # The host ops (tf2 summaries) were built on the host, outside the TPU
  # computation.
  assert [n for n in nodes if n.op == "WriteSummary"]


def test_one_core_needs_no_cross_shard_optimizer():
  _, nodes = _build(shards=1, batch=8)
  assert [n for n in nodes if n.op == "TPUReplicateMetadata"][0].attr[
      "num_replicas"].i == 1


def test_eval_and_predict_are_not_built_yet():
  loop = th.TpuLoop(num_shards=1, iterations_per_loop=1)
  with pytest.raises(NotImplementedError, match="training loops only"):
    loop.build_eval(linear_model_fn, train_input_fn(), {"batch_size": 1})
  with pytest.raises(NotImplementedError, match="training loops only"):
    loop.build_predict(linear_model_fn, train_input_fn(), {"batch_size": 1})


def test_a_target_without_tpu_devices_is_refused_before_any_graph():
  loop = th.TpuLoop(num_shards=2, iterations_per_loop=4)
  with pytest.raises(th.cluster.NoTPUError,
                     match=r"use_tpu is set, but the session target \(this "
                     r"process\) has no TPU devices; it has \d+ device\(s\) "
                     r"of types \['CPU'\]"):
    loop.check_target("")
  # The CPU emulation runs anywhere.
  th.CpuEmulationLoop(num_shards=2, iterations_per_loop=4).check_target("")


def test_the_runner_checks_the_target_first(tmp_path):
  runner = th.Runner(linear_model_fn, th.RunConfig(str(tmp_path / "never")),
                     train_batch_size=8,
                     device_loop=th.TpuLoop(num_shards=1,
                                            iterations_per_loop=1))
  with pytest.raises(th.cluster.NoTPUError):
    runner.train(train_input_fn(), max_steps=1)
  assert not (tmp_path / "never").exists()
