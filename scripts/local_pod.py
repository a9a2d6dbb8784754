"""A pod on this machine: one TF server process per host, and the main job
trained across them.

    python -m scripts.local_pod --hosts=2 --cores_per_host=2 [main job flags]

Starts `--hosts` processes on free loopback ports, each a
`tf.distribute.Server` (job `worker`, task h) with `--cores_per_host`
virtual CPUs, waits until they accept connections, then runs the main job
(`scripts.digits_main`, any of its flags after these) with `--pod_hosts` set
to them and `--num_cores` to hosts x cores_per_host: each host reads its own
shard of the input and runs its replicas; this process is the chief, which
alone writes checkpoints and events. The servers are stopped when the job
ends. Run it again with a larger `--train_steps` to resume.

A SIGTERM, SIGINT (Ctrl-C) or SIGHUP to this launcher goes to the job alone
(the servers and the job run in their own sessions, out of the terminal's
reach), which saves a checkpoint and exits as on a preemption, releasing
its `model_dir`; then the servers are stopped. A second signal ends the job
at once. A SIGKILL of the launcher cannot be passed on: stop the job and
the servers yourself then.

`python -m scripts.local_pod --serve --task=h --cluster=...` is one host's
server (what the launcher starts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from scripts.pod_servers import ROOT  # pylint: disable=g-import-not-at-top
from scripts.pod_servers import serve  # pylint: disable=g-import-not-at-top
from scripts.pod_servers import start_pod  # pylint: disable=g-import-not-at-top
from scripts.pod_servers import stop  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("hosts", 2, "Hosts of the pod (server processes).",
                     lower_bound=1)
flags.DEFINE_integer("cores_per_host", 2, "Emulated cores (virtual CPUs) per "
                     "host.", lower_bound=1)
flags.DEFINE_bool("serve", False, "Run one host's server (internal).")
flags.DEFINE_integer("task", 0, "With --serve: this host's index.",
                     lower_bound=0)
flags.DEFINE_list("cluster", [], "With --serve: every host's host:port.")


def main(argv):
  if FLAGS.serve:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    serve(FLAGS.cluster, FLAGS.task, FLAGS.cores_per_host)
    return 0
  hosts, servers = start_pod(FLAGS.hosts, FLAGS.cores_per_host)
  print(f"pod: {FLAGS.hosts} hosts x {FLAGS.cores_per_host} cores at "
        f"{','.join(hosts)}", flush=True)
  try:
    job = subprocess.Popen(
        [sys.executable, "-m", "scripts.digits_main",
         f"--pod_hosts={','.join(hosts)}",
         f"--num_cores={FLAGS.hosts * FLAGS.cores_per_host}", *argv[1:]],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        start_new_session=True)
    with _forwarding_signals(job):
      return job.wait()
  finally:
    stop(servers)


@contextlib.contextmanager
def _forwarding_signals(job: subprocess.Popen) -> Iterator[None]:
  """Passes SIGTERM, SIGINT and SIGHUP on to `job` while in the context."""
  def forward(signum, frame):  # pylint: disable=unused-argument
    if job.poll() is None:
      job.send_signal(signum)

  names = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
  previous = {signum: signal.signal(signum, forward) for signum in names}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _is_own(arg: str) -> bool:
  names = ("hosts", "cores_per_host", "serve", "noserve", "task", "cluster")
  name = arg.lstrip("-").split("=", 1)[0]
  return arg.startswith("-") and name in names


if __name__ == "__main__":
  # The main job's flags pass through.
  flags.FLAGS(sys.argv, known_only=True)
  sys.exit(main([sys.argv[0]] + [arg for arg in sys.argv[1:]
                                 if not _is_own(arg)]))

