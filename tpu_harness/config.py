"""Run configuration: frozen dataclasses validated on construction."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Tuple

import tensorflow as tf

from hooks import paths
from hooks import validation
from tpu_harness._infeed import position as input_position

_HOST_PORT = re.compile(r"[^\s:/]+:[0-9]+|\[[0-9a-fA-F:]+\]:[0-9]+")

# Host memory the emulated infeed may hold by default.
DEFAULT_MAX_INFEED_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class TPUConfig:
  """How the device loop is laid out.

  Attributes:
    num_shards: replicas; each gets `batch_size / num_shards` examples per
      step and gradients are combined across them (`minimize()` averages
      them). On local CPU emulation each replica is a virtual CPU device.
    hosts: a pod's hosts, "host:port" of each one's TF server (job
      `worker`, task h = hosts[h]; see `tpu_harness.tpu.pod`); each runs
      `num_shards / len(hosts)` replicas and its own input pipeline. Empty:
      one host (this process, or `RunConfig.master`).
    host_wait_secs: how long a session waits for every host to accept
      connections before it fails naming those that did not.
    host_timeout_secs: a host that answers nothing for this long while a
      session to the pod is open (it died, froze, or the network to it is
      cut) ends the session with HostUnavailableError naming it; each host
      is pinged every few seconds meanwhile. Also how long each host may
      take to answer when the session starts.
  """
  num_shards: int = 1
  hosts: Tuple[str, ...] = ()
  host_wait_secs: float = 60.0
  host_timeout_secs: float = 60.0

  def __post_init__(self):
    validation.positive_int("num_shards", self.num_shards)
    if not isinstance(self.hosts, (tuple, list)) or not all(
        isinstance(host, str) and _HOST_PORT.fullmatch(host)
        for host in self.hosts):
      raise ValueError(f"`hosts` ({self.hosts!r}) must be a tuple of "
                       f"'host:port' strings, one per host of the pod.")
    object.__setattr__(self, "hosts", tuple(self.hosts))
    if len(set(self.hosts)) != len(self.hosts):
      raise ValueError(f"`hosts` ({self.hosts!r}) names a host twice.")
    if self.hosts and self.num_shards % len(self.hosts):
      raise ValueError(f"`num_shards` ({self.num_shards}) must be a multiple "
                       f"of the number of `hosts` ({len(self.hosts)}): every "
                       f"host runs as many replicas.")
    validation.positive_number("host_wait_secs", self.host_wait_secs)
    validation.positive_number("host_timeout_secs", self.host_timeout_secs)

  @property
  def num_hosts(self) -> int:
    return max(1, len(self.hosts))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Where and how training runs.

  Attributes:
    model_dir: checkpoints and events; a local path or `gs://` URL, without
      `*`, `?`, `[` or a backslash (TF's checkpoint code globs it). The run
      owns only its own checkpoints there (`model.ckpt-<step>`), and one
      trainer at a time holds it (a lease file; evaluation may run beside).
    iterations_per_loop: steps run inside one `Session.run`.
    save_checkpoints_steps: save every N steps. At most one of this and
      `save_checkpoints_secs` is set; to save by time, pass
      `save_checkpoints_steps=None, save_checkpoints_secs=600`. With both
      None there are no periodic saves (as in TF): a run still saves when
      it starts and when it stops, so that it can be resumed and evaluated.
    save_checkpoints_secs: save every N seconds.
    keep_checkpoint_max: checkpoints kept on disk; 0 keeps all. Lowered
      between runs, the surplus is deleted when training starts.
    keep_checkpoint_every_n_hours: besides those, keep one checkpoint per
      this many hours of training for good (as TF's Saver: the first one
      saved past each mark), at start-up rotation too; 10000 (the default,
      as TF's) keeps none.
    log_step_count_steps: how often global_step/sec is logged and recorded.
    save_summary_steps: how often loss and host_call scalars are written;
      `model_fn`'s tf.compat.v1 summaries at the last step of a loop that
      reaches a multiple of it (and of the call).
    tf_random_seed: graph-level random seed, or None.
    warm_start_from: a checkpoint file or directory to initialize trainable
      variables from when `model_dir` has no checkpoint yet.
    stop_on_nan_loss: raise `NanLossError` when a step's loss is NaN or
      infinite, and `hooks.NonFiniteWeightsError` when a weight is at a
      save, so no checkpoint ever holds a NaN.
    async_checkpoints: write checkpoints on a background thread, so a save
      stalls training only for a copy of the variables to host memory (see
      `hooks.CheckpointSaverHook(async_save=...)`).
    master: the session target: "" runs in this process; "grpc://host:port"
      runs the graph on that TF server (a Cloud TPU worker, see
      `tpu_harness.tpu.cluster.resolve_master`).
    tpu: the device-loop layout.
    session_config: a `tf.compat.v1.ConfigProto` merged into the device
      loop's own (which keeps its device counts); where it sets any of
      Grappler's options (`graph_options.rewrite_options`), those are
      used as they are, TF's defaults for the rest, in place of the CPU
      emulation's (one pass, no TFG, memory or layout optimizer).
    save_graph_def: write `graph.pbtxt` and each checkpoint's `.meta`.
    max_infeed_bytes: the most host memory the emulated infeed may hold:
      up to three chunks of `iterations_per_loop` steps (two queued, one
      being read). Building a loop that needs more is an error naming
      `iterations_per_loop` and the batch size. (The TPU infeed holds one
      step at a time.)
    check_tpu_compatibility: before a device loop that runs on a TPU
      (`TpuLoop`) is built, compile one replica's step with XLA on CPU and
      stop with `TPUCompatibilityError` if it cannot run on a TPU (see
      `tpu_harness.tpu.check`); a few seconds for small models.
    resume_input: what a resumed `train()` feeds first: 'exact' (default:
      the step an uninterrupted run would have fed next; each checkpoint
      holds the input pipeline's position, so nothing already trained on
      is read again; falls back to 'skip' with a warning where the
      position cannot be saved or restored), 'skip' (read and drop the
      steps already trained on), or 'restart' (call `input_fn` afresh, as
      TPUEstimator did). See `tpu_harness._infeed.position`.
  """
  model_dir: str
  iterations_per_loop: int = 100
  save_checkpoints_steps: Optional[int] = 1000
  save_checkpoints_secs: Optional[float] = None
  keep_checkpoint_max: int = 5
  keep_checkpoint_every_n_hours: float = 10000.0
  log_step_count_steps: int = 100
  save_summary_steps: int = 100
  tf_random_seed: Optional[int] = None
  warm_start_from: Optional[str] = None
  stop_on_nan_loss: bool = True
  async_checkpoints: bool = False
  master: str = ""
  tpu: TPUConfig = dataclasses.field(default_factory=TPUConfig)
  max_infeed_bytes: int = DEFAULT_MAX_INFEED_BYTES
  session_config: Optional[tf.compat.v1.ConfigProto] = None
  save_graph_def: bool = True
  check_tpu_compatibility: bool = True
  resume_input: str = input_position.EXACT

  def __post_init__(self):
    validation.non_empty_path("model_dir", self.model_dir)
    if isinstance(self.model_dir, os.PathLike):
      raise TypeError(f"`model_dir` ({self.model_dir!r}) must be a str; "
                      f"pass os.fspath(...).")
    paths.check_no_glob_characters("model_dir", self.model_dir)
    validation.positive_int("iterations_per_loop", self.iterations_per_loop)
    if (self.save_checkpoints_steps is not None
        and self.save_checkpoints_secs is not None):
      raise ValueError(
          f"`save_checkpoints_steps` ({self.save_checkpoints_steps!r}) and "
          f"`save_checkpoints_secs` ({self.save_checkpoints_secs!r}) are both "
          f"set; at most one may be, so set the other to None.")
    if self.save_checkpoints_steps is not None:
      validation.positive_int("save_checkpoints_steps",
                              self.save_checkpoints_steps)
    if self.save_checkpoints_secs is not None:
      validation.positive_number("save_checkpoints_secs",
                                 self.save_checkpoints_secs)
    validation.non_negative_int("keep_checkpoint_max",
                                self.keep_checkpoint_max, "0 keeps all")
    validation.positive_number("keep_checkpoint_every_n_hours",
                               self.keep_checkpoint_every_n_hours, "hours")
    validation.positive_int("log_step_count_steps", self.log_step_count_steps)
    validation.positive_int("save_summary_steps", self.save_summary_steps)
    if self.tf_random_seed is not None and (
        isinstance(self.tf_random_seed, bool)
        or not isinstance(self.tf_random_seed, int)):
      raise TypeError(f"`tf_random_seed` ({self.tf_random_seed!r}) must be an "
                      f"integer or None.")
    if self.warm_start_from is not None:
      paths.check_no_glob_characters(
          "warm_start_from",
          validation.non_empty_path("warm_start_from", self.warm_start_from))
    validation.boolean("stop_on_nan_loss", self.stop_on_nan_loss)
    validation.boolean("async_checkpoints", self.async_checkpoints)
    if not isinstance(self.master, str) or (
        self.master and not self.master.startswith("grpc://")):
      raise ValueError(f"`master` ({self.master!r}) must be '' (in-process) "
                       f"or a grpc://host:port target.")
    validation.positive_int("max_infeed_bytes", self.max_infeed_bytes)
    if self.session_config is not None and not isinstance(
        self.session_config, tf.compat.v1.ConfigProto):
      raise TypeError(f"`session_config` ({self.session_config!r}) must be a "
                      f"tf.compat.v1.ConfigProto or None.")
    validation.boolean("save_graph_def", self.save_graph_def)
    validation.boolean("check_tpu_compatibility",
                       self.check_tpu_compatibility)
    if self.resume_input not in input_position.MODES:
      raise ValueError(f"`resume_input` ({self.resume_input!r}) must be one "
                       f"of {', '.join(map(repr, input_position.MODES))}.")
    if not isinstance(self.tpu, TPUConfig):
      raise TypeError(f"`tpu` ({self.tpu!r}) must be a TPUConfig, got "
                      f"{type(self.tpu).__name__}.")
    if self.tpu.hosts and self.master not in (
        "", f"grpc://{self.tpu.hosts[0]}"):
      raise ValueError(f"`master` ({self.master!r}) must be '' or "
                       f"'grpc://{self.tpu.hosts[0]}' (host 0 of "
                       f"`tpu.hosts`) for a pod.")

  @property
  def session_target(self) -> str:
    """Where sessions run: `master`, or host 0 of a pod."""
    if self.tpu.hosts and not self.master:
      return f"grpc://{self.tpu.hosts[0]}"
    return self.master
