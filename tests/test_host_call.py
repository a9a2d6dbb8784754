"""host_call: TPUEstimator's contract, host ops run once per step."""

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.tf_fixtures import event_records
from tpu_harness.loops.host_call import HostCall


def _tensor_scalars(log_dir, tag):
  tf.compat.v1.summary.FileWriterCache.clear()
  return sorted((e.step, float(tf.make_ndarray(v.tensor)))
                for e in event_records(str(log_dir)) if e.HasField("summary")
                for v in e.summary.value if v.tag == tag)


def _resnet_style_model_fn(log_dir, mode_for_call=th.ModeKeys.TRAIN):
  """host_call as resnet_main.py writes it: a list of [1] tensors, tf2
  summaries under the function's own writer, all_v2_summary_ops()."""

  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode != mode_for_call:
      return spec
    global_step = tf.compat.v1.train.get_global_step()

    def host_call_fn(gs, loss, lr):
      gs = gs[0]
      with tf.compat.v2.summary.create_file_writer(
          log_dir, max_queue=params["iterations_per_loop"]).as_default():
        with tf.compat.v2.summary.record_if(True):
          tf.compat.v2.summary.scalar("loss", loss[0], step=gs)
          tf.compat.v2.summary.scalar("learning_rate", lr[0], step=gs)
        return tf.compat.v1.summary.all_v2_summary_ops()

    host_call = (host_call_fn, [tf.reshape(global_step, [1]),
                                tf.reshape(spec.loss, [1]),
                                tf.reshape(tf.constant(0.1), [1])])
    return th.ModelSpec(mode=mode, loss=spec.loss, train_op=spec.train_op,
                        eval_metrics=spec.eval_metrics, host_call=host_call)

  return model_fn


def _runner(model_dir, model_fn, shards=1, ipl=5, **config):
  return th.Runner(model_fn, th.RunConfig(
      str(model_dir), iterations_per_loop=ipl,
      tpu=th.TPUConfig(num_shards=shards), **config),
                   params={"iterations_per_loop": ipl}, train_batch_size=8,
                   eval_batch_size=8)


@pytest.mark.parametrize("shards", [1, 2])
def test_list_form_runs_once_per_step_with_that_steps_values(tmp_path,
                                                             shards):
  log_dir = tmp_path / "host"
  _runner(tmp_path / "m", _resnet_style_model_fn(str(log_dir)),
          shards=shards, save_summary_steps=5).train(train_input_fn(),
                                                     max_steps=12)
  losses = _tensor_scalars(log_dir, "loss")
  # The global step read in model_fn is the step's start value: 0..11.
  assert [step for step, _ in losses] == list(range(12))
  assert [v for _, v in _tensor_scalars(log_dir, "learning_rate")] == (
      pytest.approx([0.1] * 12))
  runner_losses = dict(
      (e.step, v.simple_value) for e in event_records(str(tmp_path / "m"))
      if e.HasField("summary") for v in e.summary.value if v.tag == "loss")
  # The runner's loss at step s is the host_call's at gs = s - 1 (loss[0]
  # is replica 0's; with one replica, the loss).
  assert sorted(runner_losses) == [5, 10, 12]
  if shards == 1:
    for step, value in runner_losses.items():
      assert dict(losses)[step - 1] == pytest.approx(value, rel=1e-6)


def test_host_call_runs_in_eval_too(tmp_path):
  log_dir = tmp_path / "eval_host"
  runner = _runner(tmp_path / "m", _resnet_style_model_fn(
      str(log_dir), mode_for_call=th.ModeKeys.EVAL))
  runner.train(train_input_fn(), max_steps=5)
  runner.evaluate(train_input_fn(), steps=3)
  # Three eval steps, all at the checkpoint's global step.
  assert [step for step, _ in _tensor_scalars(log_dir, "loss")] == [5] * 3


def test_every_n_steps_runs_the_host_ops_on_every_nth_step_of_a_loop(
    tmp_path):
  log_dir = tmp_path / "host"
  runner = th.Runner(
      _resnet_style_model_fn(str(log_dir)),
      th.RunConfig(str(tmp_path / "m"), iterations_per_loop=5),
      params={"iterations_per_loop": 5}, train_batch_size=8,
      device_loop=th.CpuEmulationLoop(num_shards=1, iterations_per_loop=5,
                                      host_call_every_n_steps=2))
  runner.train(train_input_fn(), max_steps=10)
  # Steps 0, 2, 4 of each loop of 5.
  assert [s for s, _ in _tensor_scalars(log_dir, "loss")] == [0, 2, 4, 5, 7,
                                                              9]


def test_scalar_tensors_are_refused_with_the_rule():
  call = HostCall(lambda loss: [], [tf.zeros([1])])
  with pytest.raises(ValueError, match=r"must have rank >= 1; item 0 \(.*\) "
                     r"is a scalar. Pass tf.reshape\(t, \[1\]\)"):
    call.outfeed([[tf.constant(1.0)]])
  with pytest.raises(ValueError, match="rank >= 1"):
    HostCall(lambda loss: [], [tf.constant(1.0)])


def test_dict_form_passes_by_name_and_replicas_concatenate():
  call = HostCall(lambda b, a: [a, b], {"a": tf.zeros([2]), "b": tf.ones([1])})
  outfeed = call.outfeed([{"a": tf.zeros([2]), "b": tf.ones([1])}] * 3)
  assert [outfeed[n].shape.as_list() for n in call.names] == [[6], [3]]
  stacked = {name: tf.expand_dims(value, 0) for name, value in
             outfeed.items()}
  call.build(stacked)
  with tf.compat.v1.Session() as session:
    call.after_create_session(session, None)
    values = {name: session.run(value) for name, value in stacked.items()}
    feeds = dict(zip(call._placeholders, [values[n][0] for n in call.names]))  # pylint: disable=protected-access
    a, b = session.run(call._ops, feeds)  # pylint: disable=protected-access
  np.testing.assert_array_equal(a, np.zeros(6))
  np.testing.assert_array_equal(b, np.ones(3))


@pytest.mark.parametrize("returned", [0.5, "summaries"])
def test_a_host_call_fn_that_returns_no_ops_is_a_clear_error(returned):
  with tf.Graph().as_default():
    call = HostCall(lambda loss: returned, [tf.constant([1.0])])
    stacked = {name: tf.zeros([2, 1]) for name in call.outfeed(
        [[tf.constant([1.0])]])}
    with pytest.raises(TypeError, match=r"The `host_call` function must "
                       r"return TF ops or tensors to run once per step"):
      call.build(stacked)
