"""estimator RunConfig / TPUConfig: TF's names, defaults and meaning; what
cannot be honoured is refused by name."""

import logging as std_logging

import pytest
import tensorflow as tf

from support import estimator_programs as programs
from tpu_harness import estimator as tf_estimator

RunConfig = tf_estimator.tpu.RunConfig
TPUConfig = tf_estimator.tpu.TPUConfig
InputPipelineConfig = tf_estimator.tpu.InputPipelineConfig


@pytest.mark.parametrize("kwargs,steps,secs", [
    (dict(), None, 600),                              # TF's default.
    (dict(save_checkpoints_steps=100), 100, None),
    (dict(save_checkpoints_secs=30), None, 30),
    (dict(save_checkpoints_steps=None, save_checkpoints_secs=None), None,
     None),                                           # No periodic saves.
])
def test_save_interval_defaults(kwargs, steps, secs):
  config = RunConfig(**kwargs)
  assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (
      steps, secs)


def test_positional_tpu_config_and_per_host_mapping():
  config = TPUConfig(50, 8)  # As mnist_tpu.py writes it.
  assert (config.iterations_per_loop, config.num_shards) == (50, 8)
  assert config.per_host_input_for_training == InputPipelineConfig.PER_HOST_V1
  assert config.per_host_input
  v2 = TPUConfig(per_host_input_for_training=InputPipelineConfig.PER_HOST_V2)
  assert not v2.per_host_input
  assert TPUConfig(per_host_input_for_training=False).per_host_input_for_training == (  # pylint: disable=line-too-long
      InputPipelineConfig.PER_SHARD_V1)
  # By identity, as TF: PER_SHARD_V1 is 1, which equals True.
  shard = TPUConfig(
      per_host_input_for_training=InputPipelineConfig.PER_SHARD_V1)
  assert shard.per_host_input_for_training == InputPipelineConfig.PER_SHARD_V1
  assert not shard.per_host_input
  # Evaluation and prediction: per host but under PER_HOST_V2.
  assert [(c.per_host_input_in("train"), c.per_host_input_in("eval"),
           c.per_host_input_in("infer")) for c in (config, v2, shard)] == [
               (True, True, True), (False, False, False),
               (False, True, True)]


def test_replace_and_master():
  config = RunConfig(master="grpc://10.0.0.2:8470", model_dir="/a",
                     tpu_config=TPUConfig(5, 2))
  other = config.replace(model_dir="/b")
  assert (other.model_dir, other.master, other.tpu_config) == (
      "/b", "grpc://10.0.0.2:8470", TPUConfig(5, 2))
  assert other.evaluation_master == "grpc://10.0.0.2:8470"


@pytest.mark.parametrize("make,error,message", [
    (lambda: RunConfig(save_checkpoints_steps=1, save_checkpoints_secs=1),
     ValueError, "are both set"),
    (lambda: RunConfig(master="grpc://h:1", cluster=object()), ValueError,
     "Both `master` and `cluster`"),
    (lambda: RunConfig(train_distribute=object()), NotImplementedError,
     "`train_distribute`"),
    (lambda: RunConfig(evaluation_master="grpc://other:1"),
     NotImplementedError, "evaluates where it trains"),
    (lambda: RunConfig(tpu_config={"iterations_per_loop": 2}), TypeError,
     "`tpu_config`"),
    (lambda: TPUConfig(iterations_per_loop="60s"), NotImplementedError,
     "as a time is not supported"),
    (lambda: TPUConfig(iterations_per_loop=0), ValueError,
     "`iterations_per_loop` (0) must be a positive integer"),
    (lambda: TPUConfig(num_cores_per_replica=2), NotImplementedError,
     "model parallelism"),
    (lambda: TPUConfig(per_host_input_for_training=InputPipelineConfig.
                       BROADCAST), NotImplementedError,
     "`per_host_input_for_training` (4)"),
    (lambda: TPUConfig(tpu_job_name="worker"), NotImplementedError,
     "`tpu_job_name` ('worker')"),
    (lambda: TPUConfig(experimental_host_call_every_n_steps=0), ValueError,
     "`experimental_host_call_every_n_steps` (0)"),
])
def test_refused_and_bad_arguments(make, error, message):
  with pytest.raises(error) as info:
    make()
  assert message in str(info.value)


def test_session_config_is_kept():
  session_config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
  assert RunConfig(session_config=session_config).session_config is (
      session_config)


def test_values_that_mean_the_default_are_accepted():
  # TF's TPUConfig took a step count as digits, and gave these the
  # default's meaning: one core per replica, no infeed sleep, and (with
  # input other than PER_HOST_V2) no parallel get_next.
  config = TPUConfig(iterations_per_loop="100", num_cores_per_replica=1,
                     initial_infeed_sleep_secs=0,
                     experimental_allow_per_host_v2_parallel_get_next=True)
  assert config.iterations_per_loop == 100
  assert RunConfig(protocol="grpc", tpu_config=config).tpu_config == config


@pytest.mark.parametrize("make,message", [
    (lambda: TPUConfig(num_cores_per_replica=2),
     "`num_cores_per_replica` (2) is not supported"),
    (lambda: TPUConfig(initial_infeed_sleep_secs=5),
     "`initial_infeed_sleep_secs` (5) is not supported"),
    (lambda: TPUConfig(
        per_host_input_for_training=InputPipelineConfig.PER_HOST_V2,
        experimental_allow_per_host_v2_parallel_get_next=True),
     "`experimental_allow_per_host_v2_parallel_get_next` (True)"),
    (lambda: RunConfig(protocol="grpc+verbs"),
     "`protocol` ('grpc+verbs') is not supported"),
])
def test_values_other_than_the_default_are_still_refused(make, message):
  with pytest.raises(NotImplementedError) as info:
    make()
  assert message in str(info.value)


def test_iterations_per_loop_that_is_not_a_count():
  with pytest.raises(ValueError, match=r"`iterations_per_loop` \('ten'\) "
                     "must be a positive number of steps"):
    TPUConfig(iterations_per_loop="ten")


def test_use_tpu_without_num_shards_emulates_eight_cores(tmp_path, caplog):
  # efficientnet_main.py: TPUConfig(iterations_per_loop=...,
  # per_host_input_for_training=PER_HOST_V2) and no num_shards; on a v3-8
  # TPUEstimator found 8 cores.
  replicas = []

  def model_fn(features, labels, mode, params):
    replicas.append(params["context"].num_replicas)
    return programs.conv_model_fn(features, labels, mode, params)

  config = RunConfig(model_dir=str(tmp_path), tpu_config=TPUConfig(
      iterations_per_loop=2,
      per_host_input_for_training=InputPipelineConfig.PER_HOST_V2))
  with caplog.at_level(std_logging.INFO, logger="absl"):
    estimator = tf_estimator.tpu.TPUEstimator(
        model_fn=model_fn, config=config, use_tpu=True, train_batch_size=16,
        params={"model_dir": str(tmp_path / "host"),
                "iterations_per_loop": 2, "train_steps": 2})
    estimator.train(programs.input_fn, max_steps=2)
  assert estimator.get_variable_value("global_step") == 2
  assert set(replicas) == {8}
  assert estimator.config.tpu_config.num_shards is None  # As given.
  lines = [r.getMessage() for r in caplog.records
           if "TPUConfig(num_shards=...)" in r.getMessage()]
  assert len(lines) == 1, lines
  assert "emulating 8 TPU cores on CPU, the cores of a v3-8 or v4-8 host" in (
      lines[0])


def test_use_tpu_on_a_tpu_without_num_shards_is_refused():
  config = RunConfig(master="grpc://10.0.0.2:8470", model_dir="/tmp/unused")
  with pytest.raises(ValueError, match=r"use_tpu=True on a TPU needs the "
                     r"number of its cores: pass TPUConfig\(num_shards="):
    tf_estimator.tpu.TPUEstimator(model_fn=programs.conv_model_fn,
                                  config=config, use_tpu=True,
                                  train_batch_size=16)


# ----------------------------------------------------------------------------
# The base RunConfig (tf_estimator.RunConfig), for Estimator.


def test_base_run_config_defaults_and_positional_arguments():
  config = tf_estimator.RunConfig()
  assert (config.model_dir, config.tf_random_seed, config.save_summary_steps,
          config.save_checkpoints_steps, config.save_checkpoints_secs,
          config.session_config, config.keep_checkpoint_max,
          config.log_step_count_steps) == (None, None, 100, None, 600, None,
                                           5, 100)
  assert (config.master, config.is_chief, config.num_worker_replicas) == (
      "", True, 1)
  # TF's order: model_dir, tf_random_seed, save_summary_steps, ...
  config = tf_estimator.RunConfig("/m", 7, 10, 20)
  assert (config.model_dir, config.tf_random_seed, config.save_summary_steps,
          config.save_checkpoints_steps, config.save_checkpoints_secs) == (
              "/m", 7, 10, 20, None)
  other = config.replace(model_dir="/n", keep_checkpoint_max=2)
  assert type(other) is tf_estimator.RunConfig
  assert (other.model_dir, other.keep_checkpoint_max, config.model_dir) == (
      "/n", 2, "/m")
  assert issubclass(RunConfig, tf_estimator.RunConfig)
  assert not hasattr(tf_estimator.RunConfig(), "tpu_config")


@pytest.mark.parametrize("kwargs,message", [
    (dict(model_dir=""), r"`model_dir` \(''\) must be a non-empty string"),
    (dict(save_summary_steps=-1),
     r"`save_summary_steps` \(-1\) must be an integer >= 0"),
    (dict(save_checkpoints_steps=1.5),
     r"`save_checkpoints_steps` \(1.5\) must be an integer >= 0"),
    (dict(save_checkpoints_secs=-2),
     r"`save_checkpoints_secs` \(-2\) must be a number >= 0"),
    (dict(keep_checkpoint_max=-1),
     r"`keep_checkpoint_max` \(-1\) must be an integer >= 0"),
    (dict(log_step_count_steps="x"),
     r"`log_step_count_steps` \('x'\) must be an integer >= 0"),
    (dict(tf_random_seed=1.0), r"`tf_random_seed` \(1.0\) must be an "
     r"integer"),
    (dict(session_config={}), r"`session_config` \(\{\}\) must be a "
     r"tf.compat.v1.ConfigProto"),
    (dict(keep_checkpoint_every_n_hours=0),
     r"`keep_checkpoint_every_n_hours` \(0\) must be a number > 0"),
    (dict(save_checkpoints_steps=5, save_checkpoints_secs=5),
     r"both set; set at most one"),
])
def test_base_run_config_validates_as_tf(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tf_estimator.RunConfig(**kwargs)
  with pytest.raises(ValueError, match=message):
    RunConfig(**kwargs)  # The TPU one validates the same.


def test_base_run_config_refuses_what_it_cannot_honour():
  with pytest.raises(NotImplementedError, match=r"`train_distribute` .*not "
                     r"a tf.distribute strategy.* distribution strategies"):
    tf_estimator.RunConfig(train_distribute=object())

  class TwoReplicas:  # What a MirroredStrategy over two GPUs reports.
    num_replicas_in_sync = 2

  with pytest.raises(NotImplementedError, match=r"`eval_distribute` .*2 "
                     r"replicas\) is not supported"):
    tf_estimator.RunConfig(eval_distribute=TwoReplicas())
  with pytest.raises(ValueError, match=r"\['tpu_config'\] cannot be "
                     r"replaced in a RunConfig"):
    tf_estimator.RunConfig().replace(tpu_config=TPUConfig())
