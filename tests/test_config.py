"""RunConfig and TPUConfig: frozen, validated, never rewritten."""

import dataclasses

import pytest

from tpu_harness import RunConfig
from tpu_harness import TPUConfig


def test_defaults_are_valid_and_kept_as_given():
  config = RunConfig("/tmp/m")
  assert (config.iterations_per_loop, config.save_checkpoints_steps,
          config.save_checkpoints_secs, config.keep_checkpoint_max) == (
              100, 1000, None, 5)
  assert config.tpu == TPUConfig(num_shards=1)
  by_time = RunConfig("gs://bucket/m", save_checkpoints_steps=None,
                      save_checkpoints_secs=600)
  assert by_time.save_checkpoints_secs == 600
  assert by_time.model_dir == "gs://bucket/m"
  fractional = RunConfig("/tmp/m", save_checkpoints_steps=None,
                         save_checkpoints_secs=0.5)
  assert fractional.save_checkpoints_secs == 0.5
  # Neither: no periodic saves, as in TF.
  never = RunConfig("/tmp/m", save_checkpoints_steps=None)
  assert never.save_checkpoints_steps is never.save_checkpoints_secs is None


def test_frozen():
  config = RunConfig("/tmp/m")
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.iterations_per_loop = 5


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(model_dir=""), ValueError, "`model_dir` ('') must be a non-empty"),
    (dict(model_dir=None), TypeError, "`model_dir` (None)"),
    (dict(iterations_per_loop=0), ValueError,
     "`iterations_per_loop` (0) must be a positive integer"),
    (dict(iterations_per_loop=1.5), TypeError, "`iterations_per_loop` (1.5)"),
    (dict(save_checkpoints_secs=60), ValueError,
     "`save_checkpoints_steps` (1000) and `save_checkpoints_secs` (60) are "
     "both set; at most one may be"),
    (dict(session_config="allow_soft_placement"), TypeError,
     "`session_config` ('allow_soft_placement') must be a "
     "tf.compat.v1.ConfigProto"),
    (dict(save_checkpoints_steps=-1), ValueError,
     "`save_checkpoints_steps` (-1)"),
    (dict(save_checkpoints_steps=None, save_checkpoints_secs=0), ValueError,
     "`save_checkpoints_secs` (0)"),
    (dict(keep_checkpoint_max=-1), ValueError,
     "`keep_checkpoint_max` (-1) must be an integer >= 0"),
    (dict(keep_checkpoint_max=None), TypeError, "`keep_checkpoint_max`"),
    (dict(log_step_count_steps=0), ValueError, "`log_step_count_steps` (0)"),
    (dict(save_summary_steps=0), ValueError, "`save_summary_steps` (0)"),
    (dict(tf_random_seed="1"), TypeError, "`tf_random_seed` ('1')"),
    (dict(warm_start_from=""), ValueError, "`warm_start_from` ('')"),
    (dict(tpu={"num_shards": 2}), TypeError, "`tpu` ({'num_shards': 2}) "
     "must be a TPUConfig"),
    (dict(model_dir="runs/sweep_lr[0.01]"), ValueError,
     "`model_dir` ('runs/sweep_lr[0.01]') contains [, which TensorFlow's "
     "checkpoint code"),
    (dict(model_dir="gs://b/run*"), ValueError, "`model_dir` ('gs://b/run*')"),
    (dict(warm_start_from="/w/a?b"), ValueError,
     "`warm_start_from` ('/w/a?b') contains ?"),
    (dict(save_checkpoints_steps=None, save_checkpoints_secs=float("inf")),
     ValueError, "`save_checkpoints_secs` (inf) must be a positive, finite"),
    (dict(max_infeed_bytes=0), ValueError, "`max_infeed_bytes` (0)"),
    (dict(async_checkpoints=1), TypeError,
     "`async_checkpoints` (1) must be True or False"),
    (dict(check_tpu_compatibility="no"), TypeError,
     "`check_tpu_compatibility` ('no') must be True or False"),
])
def test_bad_run_config(kwargs, error, message):
  kwargs.setdefault("model_dir", "/tmp/m")
  with pytest.raises(error) as info:
    RunConfig(**kwargs)
  assert message in str(info.value)


@pytest.mark.parametrize("value,error", [(0, ValueError), (-2, ValueError),
                                         (2.0, TypeError), (True, TypeError)])
def test_bad_num_shards(value, error):
  with pytest.raises(error, match=r"`num_shards` \("):
    TPUConfig(num_shards=value)
