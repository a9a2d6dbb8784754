"""Pods: several hosts, each a real TF server process on loopback.

The hosts are started by `scripts.local_pod` (one `tf.distribute.Server`
process each, with 2 virtual CPUs as its cores); the runner in this process
is the chief. The input is indexed (example i is made from i alone), and
each host takes the examples `input_context` gives it (i % hosts == host).
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import linear_model_fn
from support.runner_models import weights
from scripts import pod_servers
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from tpu_harness.tpu import pod

pytestmark = pytest.mark.system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = 2
CORES = 2
BATCH = 4  # Per replica.
EXAMPLES = 4096


def _example(index):
  x = tf.sin(tf.cast(index, tf.float32) * tf.constant([0.3, 0.7, 1.1, 1.7]))
  return x, tf.reduce_sum(x * tf.constant([1.0, -2.0, 0.5, 3.0]))[None]


def _shard(host, hosts=HOSTS):
  return np.arange(host, EXAMPLES, hosts)


def pod_input_fn(params):
  """Host h's examples, in order (shuffled with a seed per host)."""
  context = params["input_context"]
  assert context.num_input_pipelines == HOSTS
  indices = _shard(context.input_pipeline_id)
  dataset = tf.data.Dataset.from_tensor_slices(indices)
  if params.get("shuffle"):
    dataset = dataset.shuffle(64, seed=context.input_pipeline_id)
  return dataset.map(_example).batch(params["batch_size"],
                                     drop_remainder=True)


def one_host_input_fn(params):
  """The same global batches on one host of HOSTS * CORES replicas: per
  step, host 0's cores' batches, then host 1's."""
  assert params["input_context"].num_input_pipelines == 1
  per_step = [_shard(host)[:(len(_shard(host)) // (CORES * BATCH)) * CORES
                           * BATCH].reshape(-1, CORES * BATCH)
              for host in range(HOSTS)]
  order = np.concatenate(per_step, axis=1).reshape(-1)
  return tf.data.Dataset.from_tensor_slices(order).map(_example).batch(
      params["batch_size"], drop_remainder=True)


def _runner(model_dir, hosts=(), ipl=3, wait=60.0, params=None,
            model_fn=linear_model_fn, **config):
  return th.Runner(
      model_fn,
      th.RunConfig(str(model_dir), iterations_per_loop=ipl,
                   save_checkpoints_steps=3,
                   tpu=th.TPUConfig(num_shards=HOSTS * CORES,
                                    hosts=tuple(hosts), host_wait_secs=wait),
                   **config),
      params=params, train_batch_size=HOSTS * CORES * BATCH,
      eval_batch_size=HOSTS * CORES * BATCH)


@pytest.fixture(scope="module")
def hosts():
  addresses, processes = pod_servers.start_pod(HOSTS, CORES)
  try:
    pod.wait_for_hosts(addresses, 120)
    yield addresses
  finally:
    pod_servers.stop(processes)


class _Devices(tf.compat.v1.train.SessionRunHook):
  """Records the device of each op of the graph, by op type."""

  def __init__(self):
    self.by_type = {}

  def begin(self):
    graph = tf.compat.v1.get_default_graph()
    for op in graph.get_operations():
      self.by_type.setdefault(op.type, []).append((op.name, op.device))
    # The device loop's body is a function (control flow v2).
    for function in graph.as_graph_def().library.function:
      for node in function.node_def:
        self.by_type.setdefault(node.op, []).append((node.name, node.device))


def test_two_hosts_train_to_the_weights_of_one_host_with_four_cores(
    tmp_path, hosts):
  devices = _Devices()
  _runner(tmp_path / "pod", hosts).train(pod_input_fn, max_steps=12,
                                         hooks=[devices])
  _runner(tmp_path / "one").train(one_host_input_fn, max_steps=12)
  np.testing.assert_allclose(weights(str(tmp_path / "pod")),
                             weights(str(tmp_path / "one")), rtol=1e-5)
  # Each host's input pipeline, iterator and queue are on that host.
  for host in range(HOSTS):
    iterators = [device for name, device in devices.by_type["IteratorV2"]
                 if name.startswith(f"train_host_{host}_infeed/")]
    assert iterators == [pod.host_device(host)], devices.by_type[
        "IteratorV2"]
  # The variables on host 0; each replica's matmul on its own core.
  (variable,) = [device for name, device in devices.by_type["VarHandleOp"]
                 if name == "w"]
  assert variable == pod.host_device(0)
  matmuls = {device for _, device in devices.by_type["MatMul"]}
  assert {pod.replica_device(h, c) for h in range(HOSTS)
          for c in range(CORES)} <= matmuls


def _tagging_model_fn(features, labels, mode, params):
  """Eval: what each replica saw (example index, its host's tag)."""
  del labels, params  # Unused.
  index, tag = features
  loss = tf.reduce_mean(tf.cast(index, tf.float32)) * 0.0
  tf.compat.v1.train.get_or_create_global_step()

  def metric_fn(index, tag):
    return {
        "own_shard": tf.compat.v1.metrics.mean(
            tf.cast(tf.equal(index % HOSTS, tag), tf.float32)),
        "mean_index": tf.compat.v1.metrics.mean(tf.cast(index, tf.float64)),
        "mean_tag": tf.compat.v1.metrics.mean(tf.cast(tag, tf.float64)),
    }

  return th.ModelSpec(mode=mode, loss=loss,
                      eval_metrics=(metric_fn, [index, tag]))


def _tagged_input_fn(params):
  host = params["input_context"].input_pipeline_id
  dataset = tf.data.Dataset.from_tensor_slices(_shard(host)).map(
      lambda i: ((i, tf.constant(host, tf.int64)), tf.zeros([1])))
  return dataset.batch(params["batch_size"], drop_remainder=True)


def test_each_host_reads_only_its_shard(tmp_path, hosts):
  runner = _runner(tmp_path, hosts, model_fn=_tagging_model_fn)
  with tf.Graph().as_default():  # A checkpoint to evaluate.
    tf.compat.v1.train.get_or_create_global_step()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(session, str(tmp_path / "model.ckpt"),
                                      global_step=0)
  results = runner.evaluate(_tagged_input_fn)
  assert results["own_shard"] == 1.0  # Every example came from its host.
  assert results["mean_tag"] == pytest.approx(0.5)  # Both, equally.
  # Every example once: the mean index of all of them.
  assert results["mean_index"] == pytest.approx((EXAMPLES - 1) / 2)


def test_a_resumed_pod_continues_exactly(tmp_path, hosts):
  params = {"shuffle": True}
  _runner(tmp_path / "straight", hosts, params=params).train(
      pod_input_fn, max_steps=12)
  for stop in (5, 12):
    _runner(tmp_path / "resumed", hosts, params=params).train(
        pod_input_fn, max_steps=stop)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))
  # Each host's input position is in the checkpoint.
  names = {name for name, _ in tf.train.list_variables(
      str(tmp_path / "resumed"))}
  assert {"tpu_harness_input/iterator_state",
          "tpu_harness_input/host_1/iterator_state"} <= names


class _KillAt(tf.compat.v1.train.SessionRunHook):
  """SIGKILLs a process once the global step reaches `step`."""

  def __init__(self, process, step):
    self._process = process
    self._step = step

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(
        tf.compat.v1.train.get_global_step())

  def after_run(self, run_context, run_values):
    if run_values.results + 3 >= self._step and self._process.poll() is None:
      os.kill(self._process.pid, signal.SIGKILL)


def test_a_killed_host_is_a_clear_error_and_the_run_resumes(tmp_path):
  addresses, processes = pod_servers.start_pod(HOSTS, CORES)
  try:
    pod.wait_for_hosts(addresses, 120)
    with pytest.raises(th.HostUnavailableError) as info:
      _runner(tmp_path, addresses, wait=5).train(
          pod_input_fn, max_steps=300, hooks=[_KillAt(processes[1], 9)])
    message = str(info.value)
    assert f"Host 1 ({addresses[1]}) of the pod stopped answering" in message
    assert "restart the host's TF server" in message
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert restore_order.unreadable_reason(latest) is None
    assert 6 <= contents.checkpoint_step(latest) < 300
    # The host comes back: training resumes from the checkpoint.
    processes[1] = pod_servers.start_server(addresses, 1, CORES)
    pod.wait_for_hosts(addresses, 120)
    _runner(tmp_path, addresses).train(pod_input_fn, max_steps=30)
    assert contents.checkpoint_step(
        tf.train.latest_checkpoint(str(tmp_path))) == 30
  finally:
    pod_servers.stop(processes)


def test_a_host_that_is_not_up_is_a_clear_error_after_a_bounded_wait(
    tmp_path, hosts):
  (missing,) = pod_servers.free_ports(1)
  addresses = (hosts[0], f"localhost:{missing}")
  started = time.monotonic()
  with pytest.raises(th.HostUnavailableError,
                     match=rf"Host 1 \(localhost:{missing}\) of the pod did "
                     r"not accept connections within 2 s"):
    _runner(tmp_path, addresses, wait=2).train(pod_input_fn, max_steps=3)
  assert time.monotonic() - started < 60  # Not TF's endless wait.


# Pure parts.


def test_wait_for_hosts_gives_up_at_the_deadline():
  now = [0.0]
  (port,) = pod_servers.free_ports(1)
  with pytest.raises(th.HostUnavailableError, match=r"Host 0 \(localhost:"
                     rf"{port}\) of the pod did not accept connections "
                     r"within 3 s"):
    pod.wait_for_hosts([f"localhost:{port}"], 3,
                       clock=lambda: now[0],
                       sleep=lambda secs: now.__setitem__(0, now[0] + secs))
  assert now[0] == 3.0


def test_devices_of_hosts_and_cores():
  assert pod.host_device(1) == "/job:worker/task:1/device:CPU:0"
  assert pod.replica_device(1, 3) == "/job:worker/task:1/device:CPU:3"
  assert pod.cluster_spec(["a:1", "b:2"]).as_dict() == {
      "worker": ["a:1", "b:2"]}


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_shards=3, hosts=("a:1", "b:2")),
     r"`num_shards` \(3\) must be a multiple of the number of `hosts` \(2\)"),
    (dict(hosts=("a",)), r"`hosts` \(\('a',\)\) must be a tuple of "
     r"'host:port' strings"),
    (dict(num_shards=2, hosts=("a:1", "a:1")), r"names a host twice"),
    (dict(hosts=("a:1",), host_wait_secs=0), r"`host_wait_secs`"),
    (dict(hosts=("a:1",), host_timeout_secs=-1), r"`host_timeout_secs` \(-1\)"),
])
def test_bad_pod_configs_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    th.TPUConfig(**kwargs)


def test_a_pods_master_is_its_host_0():
  tpu = th.TPUConfig(num_shards=2, hosts=("a:1", "b:2"))
  assert th.RunConfig("/tmp/m", tpu=tpu).session_target == "grpc://a:1"
  with pytest.raises(ValueError, match=r"`master` \('grpc://b:2'\) must be "
                     r"'' or 'grpc://a:1'"):
    th.RunConfig("/tmp/m", tpu=tpu, master="grpc://b:2")


def test_a_runner_refuses_what_contradicts_the_pod(tmp_path):
  tpu = th.TPUConfig(num_shards=2, hosts=("a:1", "b:2"))
  config = th.RunConfig(str(tmp_path), tpu=tpu)
  with pytest.raises(ValueError, match=r"`params` .* must not contain "
                     r"'input_context'"):
    th.Runner(linear_model_fn, config, params={"input_context": 1})
  with pytest.raises(ValueError, match=r"`device_loop` \(TpuLoop\) builds "
                     r"for 1 host\(s\), `config.tpu.hosts` names 2"):
    th.Runner(linear_model_fn, config, device_loop=th.TpuLoop(
        num_shards=2, iterations_per_loop=1))


class _GoneHostSession:
  """A session whose host went away: closing it fails as TF's does."""

  def __init__(self):
    self.closed = threading.Event()

  def close(self):
    self.closed.set()
    raise tf.errors.DeadlineExceededError(None, None, "Deadline Exceeded")


def test_a_failed_background_close_prints_no_traceback(monkeypatch):
  raised = []
  monkeypatch.setattr(threading, "excepthook", raised.append)
  session = _GoneHostSession()
  pod.close_in_background(session.close, "close_test_session").join(60)
  assert session.closed.is_set()
  assert not raised


def _threads(pid):
  """The threads of process `pid` (Linux's /proc)."""
  return len(os.listdir(f"/proc/{pid}/task"))


def _step(model_dir):
  """The step of `model_dir`'s latest checkpoint."""
  path = tf.train.latest_checkpoint(model_dir)
  return tf.train.load_checkpoint(path).get_tensor("global_step")


@pytest.mark.system
def test_chiefs_killed_mid_loop_leave_nothing_on_the_hosts(tmp_path):
  """Each chief killed mid-training left ~4 threads and 20-40 MB on every
  host server for good; the next trainer closes what they left.

  The threads are counted after a trainer that ran to its end, before and
  after three killed chiefs: what a killed chief leaves depends on where
  the kill lands, and only the next trainer closes it.
  """
  addresses, processes = pod_servers.start_pod(2, 1)
  model_dir = str(tmp_path / "model")

  def chief(train_steps):
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.digits_main",
         f"--model_dir={model_dir}", f"--pod_hosts={','.join(addresses)}",
         "--num_cores=2", f"--train_steps={train_steps}",
         "--iterations_per_loop=20", "--save_checkpoints_steps=20",
         "--mode=train"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def finished_trainer():
    steps = _step(model_dir) + 20 if os.path.isdir(model_dir) else 20
    assert chief(steps).wait(timeout=300) == 0
    return [_threads(process.pid) for process in processes]

  try:
    pod.wait_for_hosts(addresses, 120)
    before = finished_trainer()
    for _ in range(3):
      killed = chief(1000000)
      try:
        latest = tf.train.latest_checkpoint(model_dir)
        deadline = time.monotonic() + 180
        while tf.train.latest_checkpoint(model_dir) == latest:
          assert killed.poll() is None and time.monotonic() < deadline
          time.sleep(0.2)
      finally:
        killed.kill()
        killed.wait()
      # The killed chief's lease is stale only after a minute: it was
      # ours, a test's; remove it.
      os.remove(os.path.join(model_dir, ".tpu_harness_lease.json"))
    after = finished_trainer()
  finally:
    pod_servers.stop(processes)
  # Was: +4 to +5 threads on each host for each dead chief.
  for host in range(2):
    assert after[host] - before[host] <= 2, (before, after)
