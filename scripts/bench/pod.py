"""Steps/sec of an emulated pod against the same job in one process.

For each of --hosts (default 1, 2, 4) an emulated pod of that many hosts
(`scripts.local_pod`: one TF server process each, `--cores_per_host`
emulated cores) trains a small MLP at a fixed per-host batch, each host
reading its own shard. The baseline, measured in the same run, is the same
job (as many replicas, the same global batch) in this one process. Each
trains --steps steps after a warm-up loop; steps/sec counts from the end of
the first loop to the end of the last (a hook's `after_run`).

    python -m scripts.bench.pod [--hosts=1,2,4] [--steps=600]

On a machine with fewer cores than the pod has hosts (CI has 2), this shows
the pod's overhead (gRPC between processes, a while loop whose ops span
tasks), not a speed-up: every host competes for the same cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tpu_harness as th  # pylint: disable=g-import-not-at-top
from scripts import pod_servers  # pylint: disable=g-import-not-at-top
from tpu_harness.tpu import pod  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_list("hosts", ["1", "2", "4"], "Pod sizes to measure.")
flags.DEFINE_integer("cores_per_host", 1, "Emulated cores per host.",
                     lower_bound=1)
flags.DEFINE_integer("per_host_batch", 64, "Examples per host per step.",
                     lower_bound=1)
flags.DEFINE_integer("steps", 600, "Timed steps per measurement.",
                     lower_bound=2)
flags.DEFINE_integer("iterations_per_loop", 50, "Steps per loop.",
                     lower_bound=1)

FEATURES = 64


def input_fn(params):
  context = params["input_context"]

  def example(index):
    x = tf.sin(tf.cast(index, tf.float32)
               * tf.linspace(0.1, 3.0, FEATURES))
    return x, tf.reduce_sum(x)[None]

  return (tf.data.Dataset.range(2**62)
          .shard(context.num_input_pipelines, context.input_pipeline_id)
          .map(example).batch(params["batch_size"], drop_remainder=True))


def model_fn(features, labels, mode, params):
  del params  # Unused.
  hidden = tf.compat.v1.layers.dense(features, 128, tf.nn.relu)
  prediction = tf.compat.v1.layers.dense(hidden, 1)
  loss = tf.reduce_mean(tf.square(prediction - labels))
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(1e-3))
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, tf.compat.v1.train.get_global_step()))


class _LoopTimes(tf.compat.v1.train.SessionRunHook):

  def __init__(self):
    self.times: List[float] = []

  def after_run(self, run_context, run_values):
    self.times.append(time.monotonic())


def steps_per_sec(hosts: List[str], count: int) -> float:
  """Trains a fresh model of `count` hosts' replicas and global batch (on
  `hosts`, or in this process); steps/sec after its first loop."""
  ipl = FLAGS.iterations_per_loop
  with tempfile.TemporaryDirectory() as model_dir:
    runner = th.Runner(model_fn, th.RunConfig(
        model_dir, iterations_per_loop=ipl, save_checkpoints_steps=None,
        save_graph_def=False, log_step_count_steps=10**9,
        tpu=th.TPUConfig(num_shards=count * FLAGS.cores_per_host,
                         hosts=tuple(hosts))),
                       train_batch_size=FLAGS.per_host_batch * count)
    hook = _LoopTimes()
    runner.train(input_fn, max_steps=FLAGS.steps + ipl, hooks=[hook])
  return FLAGS.steps / (hook.times[-1] - hook.times[0])


def main(argv):
  del argv  # Unused.
  _common.quiet()
  cores = FLAGS.cores_per_host
  rows: Dict[int, tuple] = {}
  if FLAGS.per_host_batch % cores:
    raise app.UsageError("--per_host_batch must be a multiple of "
                         "--cores_per_host.")
  for count in sorted(int(value) for value in FLAGS.hosts):
    one_process = steps_per_sec([], count)
    hosts, servers = pod_servers.start_pod(count, cores)
    try:
      pod.wait_for_hosts(hosts, 120)
      on_pod = steps_per_sec(hosts, count)
    finally:
      pod_servers.stop(servers)
    rows[count] = (one_process, on_pod)
  print(f"\n{cores} core(s) per host, {FLAGS.per_host_batch} examples per "
        f"host per step, {FLAGS.steps} steps; {os.cpu_count()} CPU cores "
        f"here\n")
  _common.print_table(
      ["hosts", "one process steps/sec", "pod steps/sec", "pod examples/sec",
       "pod / one process"],
      [(count, f"{one_process:.1f}", f"{on_pod:.1f}",
        f"{on_pod * count * FLAGS.per_host_batch:.0f}",
        f"{on_pod / one_process:.2f}")
       for count, (one_process, on_pod) in rows.items()], numeric=[True] * 5)


if __name__ == "__main__":
  app.run(main)
