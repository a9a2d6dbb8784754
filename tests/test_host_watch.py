"""host_watch: a pod whose host dies, freezes or is not the pod's, with
real TF servers on loopback (started by `scripts.pod_servers`)."""

import os
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf

import hooks
import tpu_harness as th
from scripts import pod_servers
from support.runner_models import linear_model_fn
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from tpu_harness.tpu import host_watch
from tpu_harness.tpu import pod

HOSTS = 2
CORES = 2
BATCH = 4  # Per replica.
# How long a lost host may stay silent in these tests.
TIMEOUT_SECS = 3.0
# Bounded waits for what must end (generous: a loaded 2-core machine).
END_WITHIN_SECS = 180


@pytest.mark.parametrize("events, now, silent", [
    # (host, when it answered) after all answered at 0; timeout 10.
    ([], 10.0, []),                                  # Exactly the timeout.
    ([], 10.5, [(0, 10.5), (1, 10.5)]),
    ([(0, 5.0)], 12.0, [(1, 12.0)]),
    ([(0, 5.0), (1, 9.0)], 16.0, [(0, 11.0)]),
    ([(1, 9.0), (1, 3.0)], 18.0, [(0, 18.0)]),      # Late news is old news.
])
def test_liveness_names_hosts_silent_past_the_timeout(events, now, silent):
  liveness = host_watch.Liveness(2, timeout_secs=10.0, now=0.0)
  for host, when in events:
    liveness.answered(host, when)
  assert liveness.silent(now) == silent


def _example(index):
  x = tf.sin(tf.cast(index, tf.float32) * tf.constant([0.3, 0.7, 1.1, 1.7]))
  return x, tf.reduce_sum(x * tf.constant([1.0, -2.0, 0.5, 3.0]))[None]


def _input_fn(params):
  context = params["input_context"]
  indices = np.arange(context.input_pipeline_id, 1 << 20, HOSTS)
  return tf.data.Dataset.from_tensor_slices(indices).map(_example).batch(
      params["batch_size"], drop_remainder=True)


def _runner(model_dir, addresses):
  return th.Runner(
      linear_model_fn,
      th.RunConfig(str(model_dir), iterations_per_loop=3,
                   save_checkpoints_steps=6,
                   tpu=th.TPUConfig(num_shards=HOSTS * CORES,
                                    hosts=tuple(addresses),
                                    host_wait_secs=60,
                                    host_timeout_secs=TIMEOUT_SECS)),
      train_batch_size=HOSTS * CORES * BATCH)


class _Pod:
  """Host servers on loopback, each restartable."""

  def __init__(self):
    self.addresses, self.processes = pod_servers.start_pod(HOSTS, CORES)
    pod.wait_for_hosts(self.addresses, 120)

  def act(self, what, host):
    os.kill(self.processes[host].pid,
            signal.SIGKILL if what == "kill" else signal.SIGSTOP)

  def revive(self, host):
    process = self.processes[host]
    if process.poll() is None:
      process.send_signal(signal.SIGCONT)
    else:
      self.processes[host] = pod_servers.start_server(self.addresses, host,
                                                      CORES)
    pod.wait_for_hosts(self.addresses, 120)

  def stop(self):
    for process in self.processes:
      if process.poll() is None:
        process.send_signal(signal.SIGCONT)
    pod_servers.stop(self.processes)


class _ActAtStep(tf.compat.v1.train.SessionRunHook):
  """Acts on a host after the loop that reaches `step`: between loops."""

  def __init__(self, act, step):
    self._act = act
    self._step = step
    self.done = False

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(
        tf.compat.v1.train.get_global_step())

  def after_run(self, run_context, run_values):
    if not self.done and run_values.results + 3 >= self._step:
      self.done = True
      self._act()


class _ActBeforeSave(hooks.CheckpointSaverListener):
  """Acts on a host just before the save of a step >= `step`."""

  def __init__(self, act, step):
    self._act = act
    self._step = step
    self.done = False

  def before_save(self, session, global_step_value):
    if not self.done and global_step_value >= self._step:
      self.done = True
      self._act()


def _train_bounded(runner, **kwargs):
  """runner.train(...) on a thread; returns what it raised (it must end)."""
  outcome = {}

  def train():
    try:
      runner.train(_input_fn, **kwargs)
    except BaseException as error:  # pylint: disable=broad-except
      outcome["error"] = error

  thread = threading.Thread(target=train, daemon=True)
  thread.start()
  thread.join(END_WITHIN_SECS)
  assert not thread.is_alive(), "training hung"
  return outcome.get("error")


@pytest.mark.system
@pytest.mark.parametrize("what, host, when", [
    ("kill", 0, "between loops"),
    ("stop", 0, "between loops"),
    ("stop", 1, "between loops"),
    ("kill", 0, "during a save"),
    ("stop", 1, "during a save"),
])
def test_a_lost_host_ends_training_naming_it_and_the_run_resumes(
    tmp_path, what, host, when):
  the_pod = _Pod()
  try:
    def act():
      the_pod.act(what, host)

    extra = ({"hooks": [_ActAtStep(act, 9)]} if when == "between loops"
             else {"saving_listeners": [_ActBeforeSave(act, 12)]})
    error = _train_bounded(_runner(tmp_path, the_pod.addresses),
                           max_steps=3000, **extra)
    assert isinstance(error, th.HostUnavailableError), error
    message = str(error)
    assert f"host {host} ({the_pod.addresses[host]})" in message
    assert "`TPUConfig.host_timeout_secs` is 3" in message
    assert "Restart that host's TF server" in message
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert restore_order.unreadable_reason(latest) is None
    assert 6 <= contents.checkpoint_step(latest) < 3000
    # The host comes back: training resumes from the checkpoint.
    the_pod.revive(host)
    resumed = contents.checkpoint_step(latest) + 6
    assert _train_bounded(_runner(tmp_path, the_pod.addresses),
                          max_steps=resumed) is None
    assert contents.checkpoint_step(
        tf.train.latest_checkpoint(str(tmp_path))) == resumed
  finally:
    the_pod.stop()


@pytest.mark.system
def test_hosts_that_are_not_the_pods_are_named(tmp_path):
  first, second = _Pod(), _Pod()
  try:
    a, b = first.addresses
    cases = [
        # Host 1 of another pod (a server of task 1, not this one's).
        ((a, second.addresses[1]),
         rf"`TPUConfig.hosts\[1\]` \('{second.addresses[1]}'\) is a TF "
         r"server of task 1, but not the one host 0's cluster runs task 1 "
         r"on"),
        # Host 0 of this pod given as host 1.
        ((b, a), rf"`TPUConfig.hosts\[1\]` \('{a}'\) is the TF server of "
         r"task 0, not task 1"),
    ]
    for addresses, message in cases:
      with pytest.raises(ValueError, match=message):
        _runner(tmp_path, addresses).train(_input_fn, max_steps=3)
    # Nothing was trained on the wrong cluster.
    assert not contents.scan(str(tmp_path)).checkpoints
  finally:
    first.stop()
    second.stop()


@pytest.mark.system
def test_a_cluster_of_another_size_is_named(tmp_path):
  addresses, processes = pod_servers.start_pod(3, 1)
  try:
    pod.wait_for_hosts(addresses, 120)
    with pytest.raises(ValueError, match=r"runs a cluster of tasks "
                       r"\[0, 1, 2\] of job 'worker', but `TPUConfig.hosts` "
                       r"names 2 hosts"):
      host_watch.check_cluster(addresses[:2], deadline_secs=30)
  finally:
    pod_servers.stop(processes)
