"""The runner tests' shared helpers: a Runner of the linear model, and
the summaries a run wrote."""

import tensorflow as tf

import tpu_harness as th
from support.runner_models import linear_model_fn
from support.tf_fixtures import event_records

# Weights of a checkpoint written by hand, with known predictions.
KNOWN_W = [[1.0], [0.0], [-2.0], [3.0]]


def make_runner(model_dir, *, ipl=10, shards=1, save_steps=20, batch=32,
                params=None, infeed_layout=None, **config):
  config = th.RunConfig(str(model_dir), iterations_per_loop=ipl,
                        save_checkpoints_steps=save_steps,
                        tpu=th.TPUConfig(num_shards=shards), **config)
  device = None
  if infeed_layout is not None:
    device = th.CpuEmulationLoop(num_shards=shards, iterations_per_loop=ipl,
                                 max_infeed_bytes=config.max_infeed_bytes,
                                 infeed_layout=infeed_layout)
  return th.Runner(
      linear_model_fn, config, params=params, train_batch_size=batch,
      eval_batch_size=batch, predict_batch_size=batch, device_loop=device)


def scalars(log_dir, tag):
  tf.compat.v1.summary.FileWriterCache.clear()
  return [(e.step, v.simple_value) for e in event_records(str(log_dir))
          if e.HasField("summary") for v in e.summary.value if v.tag == tag]


def tensor_scalars(log_dir, tag):
  """(step, value) of tf2 summaries (stored as tensors) with `tag`."""
  return [(e.step, float(tf.make_ndarray(v.tensor)))
          for e in event_records(str(log_dir)) if e.HasField("summary")
          for v in e.summary.value if v.tag == tag]
