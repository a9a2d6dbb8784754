"""TpuLoop: the TPU training, evaluation and prediction graphs build on CPU
with the expected ops and shapes. (It cannot run here: there is no TPU; see the module docstring.)"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import hooks
from support import runner_models
import tpu_harness as th
from tpu_harness._run import prediction
from tpu_harness.loops import tpu_loop
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.tf_fixtures import ancestors


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


def test_the_device_loop_runs_after_the_hooks_reads_of_the_global_step():
  # As on the CPU (tests/test_cpu_loop.py): a hook's fetch of the step,
  # TF's shared read or the variable itself, sees the step before the run.
  _build()
  graph = tf.compat.v1.get_default_graph()
  graph_def = graph.as_graph_def()
  reads = {graph.as_graph_element(
      tf.compat.v1.train.get_global_step()).op.name,
           hooks.global_step_read().op.name}
  loops = [node.name for node in graph_def.node
           if node.op in ("While", "TPUReplicateMetadata")
           and not node.name.startswith("train_infeed/")]
  assert "device_loop" in loops
  for name in loops:
    assert reads <= ancestors(graph_def, [name]), name


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
  assert isinstance(hook, tpu_loop.TpuSystemHook)
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


def _by_type(nodes):
  by_type = collections.defaultdict(list)
  for node in nodes:
    by_type[node.op].append(node)
  return by_type


def _shapes(node, attr="shapes"):
  return [[d.size for d in s.dim] for s in node.attr[attr].list.shape]


def _eval_input(params):
  x, y = runner_models.data(64)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(
      params["batch_size"], drop_remainder=True)


@pytest.mark.parametrize("per_host_input", [False, True])
def test_eval_graph_sends_loss_and_metric_tensors_per_core(per_host_input):
  tf.compat.v1.train.get_or_create_global_step()
  loop = th.TpuLoop(num_shards=2, iterations_per_loop=4,
                    per_host_input=per_host_input)
  calls = []

  def input_fn(params):
    calls.append(params["batch_size"])
    return _eval_input(params)

  built = loop.build_eval(linear_model_fn, input_fn, {"batch_size": 4})
  # PER_HOST_V1 reads the global batch and splits it; V2 a core's batch.
  assert calls == [8 if per_host_input else 4]
  by_type = _by_type(_ops(tf.compat.v1.get_default_graph().as_graph_def()))
  enqueues = by_type["InfeedEnqueueTuple"]
  assert sorted(n.attr["device_ordinal"].i for n in enqueues) == [0, 1]
  for node in enqueues + by_type["InfeedDequeueTuple"]:
    assert _shapes(node) == [[4, 4], [4, 1]]
  metadata, = by_type["TPUReplicateMetadata"]
  assert metadata.attr["num_replicas"].i == 2
  assert not by_type["CrossReplicaSum"]  # No gradients in eval.
  # Per core and step: the loss and metric_fn's two tensors.
  sent, = by_type["OutfeedEnqueueTuple"]
  assert len(sent.attr["dtypes"].list.type) == 3
  received = by_type["OutfeedDequeueTuple"]
  assert sorted(n.attr["device_ordinal"].i for n in received) == [0, 1]
  assert _shapes(received[0]) == [[], [4, 1], [4, 1]]  # Sorted by name.
  # On the host: the cores' tensors concatenated per step, metric_fn's
  # metrics and the mean loss over them.
  outfeed = built.fetches["outfeed"]
  assert sorted(outfeed) == ["loss", "metric/labels", "metric/prediction"]
  assert outfeed["metric/labels"].shape.as_list() == [None, 8, 1]
  assert outfeed["loss"].shape.as_list() == [None]
  assert sorted(built.metrics.values) == ["loss", "mae", "mse"]
  assert sorted(built.fetches) == ["outfeed"]
  assert isinstance(built.hooks[0], tpu_loop.TpuSystemHook)
  assert built.metrics in built.hooks
  assert built.host_call is None
  # metric_fn ran on the host, outside the replicated computation.
  for metric in built.metrics.values.values():
    assert "_tpu_replicate" not in metric.op.node_def.attr


def _labels_from_features(features, labels, mode, params):
  assert labels is None, labels  # Features alone, as TPUEstimator gave.
  return linear_model_fn(features["x"], features["y"], mode, params)


def _features_alone_input(params):
  x, y = runner_models.data(64)
  return tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).repeat().batch(
      params["batch_size"], drop_remainder=True)


@pytest.mark.parametrize("mode, per_host_input", [
    ("train", False), ("eval", False), ("eval", True)])
def test_features_alone_build_with_labels_none(mode, per_host_input):
  tf.compat.v1.train.get_or_create_global_step()
  loop = th.TpuLoop(num_shards=2, iterations_per_loop=4,
                    per_host_input=per_host_input)
  build = loop.build_train if mode == "train" else loop.build_eval
  kwargs = {"skip_steps": 0} if mode == "train" else {}
  built = build(_labels_from_features, _features_alone_input,
                {"batch_size": 4}, **kwargs)
  by_type = _by_type(_ops(tf.compat.v1.get_default_graph().as_graph_def()))
  # Each core's features, in tf.nest order: 'x' [4, 4], 'y' [4, 1].
  for node in by_type["InfeedEnqueueTuple"] + by_type["InfeedDequeueTuple"]:
    assert _shapes(node) == [[4, 4], [4, 1]]
  assert built.fetches["outfeed"]["loss"].shape.as_list() == [None]
  if mode == "eval":  # metric_fn's tensors: 'y' of the features.
    assert built.fetches["outfeed"]["metric/labels"].shape.as_list() == [
        None, 8, 1]


@pytest.mark.parametrize("per_host_input", [False, True])
def test_predict_graph_pads_batches_and_sends_real_row_counts(
    per_host_input):
  loop = th.TpuLoop(num_shards=2, iterations_per_loop=3,
                    per_host_input=per_host_input)

  def input_fn(params):
    x, _ = runner_models.data(5)  # Less than a batch: padded.
    return tf.data.Dataset.from_tensor_slices(x).batch(params["batch_size"])

  built = loop.build_predict(linear_model_fn, input_fn, {"batch_size": 4})
  by_type = _by_type(_ops(tf.compat.v1.get_default_graph().as_graph_def()))
  # Each core gets a full batch of 4 and its count of real rows.
  for node in by_type["InfeedEnqueueTuple"] + by_type["InfeedDequeueTuple"]:
    assert _shapes(node) == [[4, 4], []]
  # Per core: its count and its two predictions; the host stacks the cores.
  assert _shapes(by_type["OutfeedDequeueTuple"][0]) == [[], [4, 1], [4, 1]]
  outfeed = built.fetches["outfeed"]
  assert sorted(outfeed) == ["__valid__", "doubled", "y"]
  assert outfeed["__valid__"].shape.as_list() == [None, 2]
  assert outfeed["y"].shape.as_list() == [None, 2, 4, 1]
  assert not by_type["CrossReplicaSum"]
  # The host drops the padding as it does for the CPU emulation.
  fake = {"__valid__": np.array([[4, 1]]),
          "y": np.arange(8).reshape(1, 2, 4, 1),
          "doubled": np.zeros((1, 2, 4, 1))}
  rows = list(prediction.rows(fake))
  assert [int(r["y"][0]) for r in rows] == [0, 1, 2, 3, 4]


def test_predictions_as_one_tensor():
  def model_fn(features, labels, mode, params):
    del labels, params
    return th.ModelSpec(mode=mode, predictions=features * 2.0)

  built = th.TpuLoop(num_shards=1, iterations_per_loop=2).build_predict(
      model_fn, lambda p: tf.data.Dataset.from_tensor_slices(
          np.zeros((3, 2), np.float32)).batch(p["batch_size"]),
      {"batch_size": 2})
  assert built.fetches["outfeed"]["__single__"].shape.as_list() == [
      None, 1, 2, 2]


def test_a_target_without_tpu_devices_is_refused_before_any_graph():
  loop = th.TpuLoop(num_shards=2, iterations_per_loop=4)
  with pytest.raises(th.NoTPUError,
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
  with pytest.raises(th.NoTPUError):
    runner.train(train_input_fn(), max_steps=1)
  assert not (tmp_path / "never").exists()


def test_a_pod_slices_hosts_each_feed_and_drain_their_own_cores():
  """2 hosts x 2 cores: each host's input pipeline, iterator and infeed
  enqueues are on its CPU, one per core by its ordinal on the host, and the
  outfeed of each replica is dequeued on its host."""
  tf.compat.v1.train.get_or_create_global_step()
  contexts = []

  def input_fn(params):
    contexts.append(params["input_context"])
    return train_input_fn()(params)

  loop = th.TpuLoop(num_shards=4, iterations_per_loop=4, num_hosts=2)
  assert loop.num_hosts == 2
  built = loop.build_train(linear_model_fn, input_fn, {"batch_size": 2},
                           skip_steps=0)
  assert [(c.num_input_pipelines, c.input_pipeline_id) for c in contexts] == [
      (2, 0), (2, 1)]
  nodes = _ops(tf.compat.v1.get_default_graph().as_graph_def())
  host = {0: "/job:worker/task:0/device:CPU:0",
          1: "/job:worker/task:1/device:CPU:0"}
  enqueues = sorted((n.device, n.attr["device_ordinal"].i) for n in nodes
                    if n.op == "InfeedEnqueueTuple")
  assert enqueues == [(host[0], 0), (host[0], 1), (host[1], 0),
                      (host[1], 1)]
  iterators = sorted((n.name.split("/")[0], n.device) for n in nodes
                     if n.op == "IteratorV2")
  assert iterators == [("train_host_0_infeed", host[0]),
                       ("train_host_1_infeed", host[1])]
  dequeues = sorted((n.device, n.attr["device_ordinal"].i) for n in nodes
                    if n.op == "OutfeedDequeueTuple")
  assert dequeues == enqueues
  metadata, = [n for n in nodes if n.op == "TPUReplicateMetadata"]
  assert metadata.attr["num_replicas"].i == 4
  # One infeed per host, requested and started as one.
  assert [infeed.streams for infeed in built.infeed.hosts] == [False, False]


def test_a_pod_slice_refuses_what_it_cannot_build():
  with pytest.raises(ValueError, match=r"`num_shards` \(3\) must be a "
                     r"multiple of `num_hosts` \(2\)"):
    th.TpuLoop(num_shards=3, iterations_per_loop=1, num_hosts=2)
  tf.compat.v1.train.get_or_create_global_step()
  with pytest.raises(NotImplementedError, match="several hosts"):
    th.TpuLoop(num_shards=4, iterations_per_loop=1, num_hosts=2
               ).build_predict(linear_model_fn, train_input_fn(),
                               {"batch_size": 2})
