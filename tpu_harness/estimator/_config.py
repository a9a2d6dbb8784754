"""`tf_estimator.RunConfig`, `tf_estimator.tpu.RunConfig`, `TPUConfig`,
`InputPipelineConfig`.

TPUEstimator's names, argument order, defaults and meaning. An argument TF
had that the harness cannot honour raises a clear error naming it when it is
given a value other than TF's default; nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from hooks import validation

_USE_DEFAULT = object()
# TF's TPUConfig: a count of steps, or a time ("60s", "10m", "1h").
_ITERATIONS = re.compile(r"^(?P<value>[1-9][0-9]*)(?P<suffix>[smh]?)$")


class InputPipelineConfig:
  """How `input_fn` feeds the replicas (TF's values)."""
  PER_SHARD_V1 = 1
  PER_HOST_V1 = 2
  PER_HOST_V2 = 3
  BROADCAST = 4
  SLICED = 5


def refuse(name: str, value: Any, default: Any, what: str) -> None:
  """Raises NotImplementedError naming `name` if `value` is not TF's
  `default`; `what` says why it cannot be honoured."""
  if value is not default and value != default:
    raise NotImplementedError(
        f"`{name}` ({value!r}) is not supported by tpu_harness: {what} "
        f"Leave it at its default ({default!r}).")


@dataclasses.dataclass(frozen=True)
class TPUConfig:
  """TPU layout, as `tf_estimator.tpu.TPUConfig`.

  Arguments TF gave a value meaning its default are accepted with that
  value: `num_cores_per_replica=1` (one core per replica: the replicas are
  the cores, as without model parallelism), `initial_infeed_sleep_secs=0`
  (no sleep), `experimental_allow_per_host_v2_parallel_get_next=True` where
  TF ignored it (input other than PER_HOST_V2).

  Attributes:
    iterations_per_loop: steps per `Session.run`, an integer or a string of
      digits as TF took it ("100"); TF's time form ("60s") is not
      supported.
    num_shards: the replicas. TPUEstimator ignored it (the TPU says how many
      cores it has); here it is the number of cores to emulate on CPU when
      `use_tpu=True` and no TPU is named (None: 8, the cores of a v3-8 or
      v4-8 host, logged), and the number of TPU cores otherwise
      (required).
    num_cores_per_replica: model parallelism; not supported (None or 1).
    per_host_input_for_training: True / PER_HOST_V1 (input_fn gets the
      global batch, split among replicas), PER_HOST_V2 (input_fn gets
      per-replica batches, in evaluation and prediction too) or False /
      PER_SHARD_V1 (per-replica batches in training only); BROADCAST and
      SLICED are not supported.
    tpu_job_name, initial_infeed_sleep_secs, input_partition_dims,
    experimental_allow_per_host_v2_parallel_get_next, experimental_feed_hook:
      not supported (their defaults only).
    eval_training_input_configuration: PER_HOST_V1 only.
    experimental_host_call_every_n_steps: run host_call on every n-th step of
      a loop.
  """
  iterations_per_loop: int = 2
  num_shards: Optional[int] = None
  num_cores_per_replica: Optional[int] = None
  per_host_input_for_training: Any = True
  tpu_job_name: Optional[str] = None
  initial_infeed_sleep_secs: Optional[int] = None
  input_partition_dims: Optional[Any] = None
  eval_training_input_configuration: int = InputPipelineConfig.PER_HOST_V1
  experimental_host_call_every_n_steps: int = 1
  experimental_allow_per_host_v2_parallel_get_next: bool = False
  experimental_feed_hook: Optional[Any] = None

  def __post_init__(self):
    if isinstance(self.iterations_per_loop, str):
      match = _ITERATIONS.match(self.iterations_per_loop)
      if match is None:
        raise ValueError(
            f"`iterations_per_loop` ({self.iterations_per_loop!r}) must be a "
            f"positive number of steps.")
      if match.group("suffix"):
        raise NotImplementedError(
            f"`iterations_per_loop` ({self.iterations_per_loop!r}) as a time "
            f"is not supported by tpu_harness; give a number of steps.")
      object.__setattr__(self, "iterations_per_loop",
                         int(match.group("value")))
    validation.positive_int("iterations_per_loop", self.iterations_per_loop)
    if self.num_shards is not None:
      validation.positive_int("num_shards", self.num_shards)
    if self.num_cores_per_replica not in (None, 1):
      refuse("num_cores_per_replica", self.num_cores_per_replica, None,
             "model parallelism is not emulated (1, one core per replica, "
             "is accepted).")
    # By identity, as TF: PER_SHARD_V1 (1) == True.
    mapped = self.per_host_input_for_training
    if mapped is True:
      mapped = InputPipelineConfig.PER_HOST_V1
    elif mapped is False:
      mapped = InputPipelineConfig.PER_SHARD_V1
    if mapped not in (InputPipelineConfig.PER_SHARD_V1,
                      InputPipelineConfig.PER_HOST_V1,
                      InputPipelineConfig.PER_HOST_V2):
      raise NotImplementedError(
          f"`per_host_input_for_training` "
          f"({self.per_host_input_for_training!r}) is not supported by "
          f"tpu_harness: use True (PER_HOST_V1), PER_HOST_V2 or False "
          f"(PER_SHARD_V1).")
    object.__setattr__(self, "per_host_input_for_training", mapped)
    refuse("tpu_job_name", self.tpu_job_name, None,
           "the TPU worker job is the session target's.")
    if self.initial_infeed_sleep_secs != 0:
      refuse("initial_infeed_sleep_secs", self.initial_infeed_sleep_secs,
             None, "the infeed starts when a loop asks for input (0, no "
             "sleep, is accepted).")
    refuse("input_partition_dims", self.input_partition_dims, None,
           "spatial partitioning is not emulated.")
    refuse("eval_training_input_configuration",
           self.eval_training_input_configuration,
           InputPipelineConfig.PER_HOST_V1,
           "evaluation input is per host.")
    validation.positive_int("experimental_host_call_every_n_steps",
                            self.experimental_host_call_every_n_steps)
    if mapped == InputPipelineConfig.PER_HOST_V2:
      refuse("experimental_allow_per_host_v2_parallel_get_next",
             self.experimental_allow_per_host_v2_parallel_get_next, False,
             "the emulated infeed is read in order (with other input than "
             "PER_HOST_V2, where TF ignored it, True is accepted).")
    refuse("experimental_feed_hook", self.experimental_feed_hook, None,
           "the infeed is the harness's own.")

  @property
  def per_host_input(self) -> bool:
    """Whether training `input_fn` gets the global batch (PER_HOST_V1)."""
    return (self.per_host_input_for_training
            == InputPipelineConfig.PER_HOST_V1)

  def per_host_input_in(self, mode: str) -> bool:
    """Whether `input_fn` gets the global batch in `mode` (a ModeKeys
    value), as TPUEstimator's `TPUContext.batch_size_for_input_fn` decided:
    PER_HOST_V2 gives every mode's `input_fn` the per-core batch,
    PER_SHARD_V1 only training's."""
    if mode == "train":
      return self.per_host_input
    return (self.per_host_input_for_training
            != InputPipelineConfig.PER_HOST_V2)


def _check_one_replica_strategy(name: str, strategy: Any) -> None:
  """Accepts None or a tf.distribute strategy of one replica (what a
  program's GPU branch builds on a machine without GPUs:
  `MirroredStrategy(devices=[])` mirrors onto the CPU alone), which runs
  as the harness's one replica; refuses any other value."""
  if strategy is None:
    return
  replicas = getattr(strategy, "num_replicas_in_sync", None)
  if replicas == 1:
    logging.info("RunConfig(%s=%r): a strategy of one replica; the harness "
                 "runs the model as that one replica.", name, strategy)
    return
  raise NotImplementedError(
      f"`{name}` ({strategy!r}, "
      f"{'not a tf.distribute strategy' if replicas is None else f'{replicas} replicas'}) "  # pylint: disable=line-too-long
      f"is not supported by tpu_harness: distribution strategies of more "
      f"than one replica are not; the harness runs one replica (Estimator) "
      f"or TPU replicas (TPUEstimator). None or a strategy of one replica "
      f"(e.g. MirroredStrategy on a machine with one device) is accepted.")


class RunConfig:
  """Where and how an Estimator runs, as `tf_estimator.RunConfig`.

  TF's arguments, in its order, with its defaults: model_dir,
  tf_random_seed, save_summary_steps (100), save_checkpoints_steps,
  save_checkpoints_secs (neither given: every 600 seconds; both None: no
  periodic saves), session_config, keep_checkpoint_max (5),
  keep_checkpoint_every_n_hours (10000), log_step_count_steps
  (100), train_distribute and eval_distribute (None, or a tf.distribute
  strategy of one replica, run as the harness's one replica), device_fn,
  protocol (None or "grpc"), experimental_distribute,
  experimental_max_worker_delay_secs (None only),
  session_creation_timeout_secs (default only), checkpoint_save_graph_def.
  Validated as TF did (a value of the wrong type or range raises
  ValueError naming the argument, its value and the rule).

  Runs are local: `master` and `evaluation_master` are '' (TF_CONFIG's
  clusters are not read), one worker, the chief.

  Raises:
    ValueError: both save intervals given; a value out of TF's range.
    NotImplementedError: an argument the harness cannot honour.
  """

  def __init__(self,
               model_dir: Optional[str] = None,
               tf_random_seed: Optional[int] = None,
               save_summary_steps: int = 100,
               save_checkpoints_steps: Any = _USE_DEFAULT,
               save_checkpoints_secs: Any = _USE_DEFAULT,
               session_config: Optional[tf.compat.v1.ConfigProto] = None,
               keep_checkpoint_max: int = 5,
               keep_checkpoint_every_n_hours: float = 10000,
               log_step_count_steps: int = 100,
               train_distribute: Any = None,
               device_fn: Any = None,
               protocol: Optional[str] = None,
               eval_distribute: Any = None,
               experimental_distribute: Any = None,
               experimental_max_worker_delay_secs: Optional[int] = None,
               session_creation_timeout_secs: int = 7200,
               checkpoint_save_graph_def: bool = True):
    if (save_checkpoints_steps is _USE_DEFAULT
        and save_checkpoints_secs is _USE_DEFAULT):
      save_checkpoints_steps, save_checkpoints_secs = None, 600
    elif save_checkpoints_steps is _USE_DEFAULT:
      save_checkpoints_steps = None
    elif save_checkpoints_secs is _USE_DEFAULT:
      save_checkpoints_secs = None
    if save_checkpoints_steps is not None and save_checkpoints_secs is not None:
      raise ValueError(
          f"`save_checkpoints_steps` ({save_checkpoints_steps!r}) and "
          f"`save_checkpoints_secs` ({save_checkpoints_secs!r}) are both set; "
          f"set at most one.")
    _check("model_dir", model_dir, lambda v: isinstance(v, str) and v,
           "must be a non-empty string")
    for name, value in (("save_summary_steps", save_summary_steps),
                        ("save_checkpoints_steps", save_checkpoints_steps),
                        ("keep_checkpoint_max", keep_checkpoint_max),
                        ("log_step_count_steps", log_step_count_steps)):
      _check(name, value, lambda v: _is_int(v) and v >= 0,
             "must be an integer >= 0")
    _check("save_checkpoints_secs", save_checkpoints_secs,
           lambda v: _is_number(v) and v >= 0, "must be a number >= 0")
    _check("session_config", session_config,
           lambda v: isinstance(v, tf.compat.v1.ConfigProto),
           "must be a tf.compat.v1.ConfigProto")
    _check("tf_random_seed", tf_random_seed, _is_int,
           "must be an integer")
    _check("keep_checkpoint_every_n_hours", keep_checkpoint_every_n_hours,
           lambda v: _is_number(v) and v > 0, "must be a number > 0")
    _check("session_creation_timeout_secs", session_creation_timeout_secs,
           lambda v: _is_number(v) and v > 0, "must be a number > 0")
    if protocol != "grpc":  # TF's default server protocol.
      refuse("protocol", protocol, None, "the session target's protocol is "
             "grpc (\"grpc\", the default, is accepted).")
    for name, value in (("train_distribute", train_distribute),
                        ("eval_distribute", eval_distribute)):
      _check_one_replica_strategy(name, value)
    for name, value in (("device_fn", device_fn),
                        ("experimental_distribute", experimental_distribute),
                        ("experimental_max_worker_delay_secs",
                         experimental_max_worker_delay_secs)):
      refuse(name, value, None, "distribution strategies and device "
             "functions are not supported; the harness runs one replica "
             "(Estimator) or TPU replicas (TPUEstimator).")
    refuse("session_creation_timeout_secs", session_creation_timeout_secs,
           7200, "sessions are created without a timeout.")
    self._values = dict(
        model_dir=model_dir, tf_random_seed=tf_random_seed,
        save_summary_steps=save_summary_steps,
        save_checkpoints_steps=save_checkpoints_steps,
        save_checkpoints_secs=save_checkpoints_secs,
        session_config=session_config,
        keep_checkpoint_max=keep_checkpoint_max,
        keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
        log_step_count_steps=log_step_count_steps,
        train_distribute=train_distribute, eval_distribute=eval_distribute,
        checkpoint_save_graph_def=checkpoint_save_graph_def)

  def __getattr__(self, name: str) -> Any:
    values = self.__dict__.get("_values", {})
    if name in values:
      return values[name]
    raise AttributeError(name)

  @property
  def master(self) -> str:
    return ""

  @property
  def evaluation_master(self) -> str:
    return ""

  @property
  def is_chief(self) -> bool:
    return True

  @property
  def num_worker_replicas(self) -> int:
    return 1

  @property
  def num_ps_replicas(self) -> int:
    return 0

  @property
  def task_type(self) -> str:
    return "worker"

  @property
  def task_id(self) -> int:
    return 0

  def _arguments(self) -> dict:
    """The constructor arguments that make this config."""
    return dict(self._values)

  def replace(self, **changes) -> "RunConfig":
    """A copy with `changes` (TF's RunConfig.replace)."""
    arguments = self._arguments()
    unknown = sorted(set(changes) - set(arguments))
    if unknown:
      raise ValueError(f"{unknown} cannot be replaced in a "
                       f"{type(self).__name__}; it takes "
                       f"{sorted(arguments)}.")
    arguments.update(changes)
    return type(self)(**arguments)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(" + ", ".join(
        f"{k}={v!r}" for k, v in self._arguments().items()) + ")")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check(name: str, value: Any, rule: Callable[[Any], Any],
           what: str) -> None:
  """ValueError naming `name` and `value` unless it is None or `rule`
  holds (TF's RunConfig validation)."""
  if value is not None and not rule(value):
    raise ValueError(f"`{name}` ({value!r}) {what}.")


class TPURunConfig(RunConfig):
  """Where and how a TPUEstimator runs, as `tf_estimator.tpu.RunConfig`:
  the base RunConfig's arguments (keywords) and TPU's.

  Args (TF's): tpu_config, evaluation_master, master, cluster (a
  TPUClusterResolver, whose master() is the session target), and the base
  RunConfig's, as keywords.

  Raises:
    ValueError: both save intervals given; both `master` and `cluster`; an
      `evaluation_master` other than the master; a base argument out of
      range.
    NotImplementedError: an argument the harness cannot honour.
  """

  def __init__(self,
               tpu_config: Optional[TPUConfig] = None,
               evaluation_master: Optional[str] = None,
               master: Optional[str] = None,
               cluster: Any = None,
               **kwargs):
    if tpu_config is not None and not isinstance(tpu_config, TPUConfig):
      raise TypeError(f"`tpu_config` ({tpu_config!r}) must be a "
                      f"tpu_harness.estimator.tpu.TPUConfig.")
    if master is not None and cluster is not None:
      raise ValueError("Both `master` and `cluster` are set; give one.")
    super().__init__(**kwargs)
    self._tpu_config = tpu_config or TPUConfig()
    self._cluster = cluster
    if master is None:
      master = cluster.master() if cluster is not None else ""
    self._master = master
    if evaluation_master not in (None, master):
      raise NotImplementedError(
          f"`evaluation_master` ({evaluation_master!r}) differs from the "
          f"master ({master!r}); tpu_harness evaluates where it trains.")
    self._evaluation_master = master

  @property
  def tpu_config(self) -> TPUConfig:
    return self._tpu_config

  @property
  def master(self) -> str:
    return self._master

  @property
  def evaluation_master(self) -> str:
    return self._evaluation_master

  @property
  def cluster(self) -> Any:
    return self._cluster

  def _arguments(self) -> dict:
    return dict(self._values, tpu_config=self._tpu_config,
                cluster=self._cluster,
                master=None if self._cluster is not None else self._master)

  def replace(self, **changes) -> "TPURunConfig":
    """A copy with `changes` (TF's RunConfig.replace)."""
    if "cluster" in changes and "master" not in changes:
      changes = dict(changes, master=None)
    return super().replace(**changes)

  def __repr__(self) -> str:
    return (f"RunConfig(master={self._master!r}, tpu_config="
            f"{self._tpu_config!r}, " + ", ".join(
                f"{k}={v!r}" for k, v in self._values.items()) + ")")


# TF's name for it (tensorflow_estimator's tpu.RunConfig), as programs and
# their logs see it.
TPURunConfig.__name__ = TPURunConfig.__qualname__ = "RunConfig"
