"""Resume without replaying input: RunConfig.resume_input's three modes.

The input is indexed (element i is made from i alone), shuffled with a seed,
so a resumed run that feeds anything but what an uninterrupted run would
have fed ends with other weights. A variant of it that fails on every
element before a given index shows which elements a resumed run read.
"""

import logging as std_logging
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from tpu_harness._model_dir import contents
from support.runner_models import linear_model_fn
from support.runner_models import weights
from tpu_harness._infeed import host as host_infeed
from tpu_harness._infeed import host_position
from tpu_harness._infeed import record
from tpu_harness._infeed.layout import InfeedLayout

FEATURES = 4
BATCH = 8


def _examples(index):
  """Example `index`: features and label from the index alone."""
  x = tf.sin(tf.cast(index, tf.float32) * tf.constant([0.3, 0.7, 1.1, 1.7]))
  return x, tf.reduce_sum(x * tf.constant([1.0, -2.0, 0.5, 3.0]))[None]


def _at_least(index, first_allowed):
  with tf.control_dependencies([tf.debugging.assert_greater_equal(
      index, tf.constant(first_allowed, tf.int64),
      message="read an example already trained on")]):
    return tf.identity(index)


def input_fn_from(first_allowed=0, shuffle=True, endless=True,
                  py_function=False, extra_map=False, features_alone=False,
                  repeat=False):
  """An input_fn; reading example i < first_allowed fails. With
  `features_alone`, its elements are dicts, the labels among the features
  (see `_labels_from_features`). `endless`: 10**9 elements (long, but
  finite as tf.data's graph says), or with `repeat`, endless."""

  def input_fn(params):
    dataset = tf.data.Dataset.range(10**9 if endless else 400)
    if repeat:
      dataset = tf.data.Dataset.range(10**6).repeat()
    if py_function:  # State outside tf.data: cannot be saved.
      dataset = dataset.map(lambda i: tf.ensure_shape(tf.py_function(
          lambda v: v, [i], tf.int64), []))
    # Always there, so that every run's pipeline is the same.
    dataset = dataset.map(lambda i: _at_least(i, first_allowed))
    if shuffle:
      dataset = dataset.shuffle(64, seed=7)
    if extra_map:  # Another pipeline than the one saved.
      dataset = dataset.map(lambda i: i + 0)
    dataset = dataset.map(_examples)
    if features_alone:
      dataset = dataset.map(lambda x, y: {"x": x, "y": y})
    return dataset.batch(params["batch_size"], drop_remainder=True)

  return input_fn


def _labels_from_features(features, labels, mode, params):
  """linear_model_fn for an input of features alone."""
  assert labels is None, labels
  return linear_model_fn(features["x"], features["y"], mode, params)


def _runner(model_dir, mode="exact", ipl=5, save_steps=10, kind="chunks",
            model_fn=linear_model_fn, **config):
  config = th.RunConfig(str(model_dir), iterations_per_loop=ipl,
                        save_checkpoints_steps=save_steps, resume_input=mode,
                        tf_random_seed=3, **config)
  device = None
  if kind != "chunks":  # Every element counts as large.
    device = th.CpuEmulationLoop(
        num_shards=1, iterations_per_loop=ipl,
        max_infeed_bytes=config.max_infeed_bytes,
        infeed_layout=InfeedLayout(per_element_bytes=1))
  return th.Runner(model_fn, config, train_batch_size=BATCH,
                   device_loop=device)


@pytest.fixture(params=["chunks", "elements", "streamed"])
def infeed_kind(request):
  """The infeed's three ways of filling: chunks of small elements, large
  elements one by one, and large elements streamed (known length)."""
  return request.param


def _input_for(kind, **kwargs):
  # An input of unknown length is not streamed.
  fn = input_fn_from(**kwargs)
  if kind != "elements":
    return fn
  return lambda params: fn(params).filter(lambda x, y: True)


@pytest.mark.parametrize("mode", ["exact", "skip"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tmp_path, infeed_kind, mode):
  _runner(tmp_path / "straight", mode, kind=infeed_kind).train(
      _input_for(infeed_kind), max_steps=40)
  # Stops at 7 and 23: mid-loop, between saves.
  for stop in (7, 23, 40):
    _runner(tmp_path / "resumed", mode, kind=infeed_kind).train(
        _input_for(infeed_kind), max_steps=stop)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_restart_starts_the_input_again(tmp_path):
  _runner(tmp_path, "restart").train(input_fn_from(), max_steps=20)
  # Restarting reads the first examples again (exact mode would not).
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="already trained on"):
    _runner(tmp_path, "restart").train(input_fn_from(first_allowed=64),
                                       max_steps=30)


@pytest.mark.parametrize("features_alone", [False, True],
                         ids=["(features, labels)", "features alone"])
def test_exact_resume_does_not_read_what_was_trained_on(tmp_path, caplog,
                                                        features_alone):
  model_fn = _labels_from_features if features_alone else linear_model_fn
  _runner(tmp_path, model_fn=model_fn).train(
      input_fn_from(features_alone=features_alone), max_steps=50)
  caplog.set_level(std_logging.INFO)
  # 50 steps of 8 examples went by; the shuffle buffer holds the next 64.
  # Resuming reads from the snapshot before the last chunk filled (chunks
  # of 32 steps: elements 32 to 50 again, i.e. examples from 32 * 8 - 64).
  _runner(tmp_path, model_fn=model_fn).train(
      input_fn_from(first_allowed=32 * BATCH - 64,
                    features_alone=features_alone), max_steps=60)
  assert weights(str(tmp_path)) is not None
  dropped = [r.getMessage() for r in caplog.records
             if "Read and dropped" in r.getMessage()]
  assert dropped == ["Read and dropped 18 steps of train input already "
                     "trained on."]
  # Skip mode reads them all.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="already trained on"):
    _runner(tmp_path, "skip", model_fn=model_fn).train(
        input_fn_from(first_allowed=64, features_alone=features_alone),
        max_steps=70)


def test_features_alone_resume_with_the_weights_of_an_uninterrupted_run(
    tmp_path):
  def runner(name):
    return _runner(tmp_path / name, model_fn=_labels_from_features)

  runner("straight").train(input_fn_from(features_alone=True), max_steps=40)
  for stop in (7, 23, 40):  # Mid-loop, between saves.
    runner("resumed").train(input_fn_from(features_alone=True),
                            max_steps=stop)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_checkpoints_hold_the_position_beside_the_model(tmp_path):
  # Chunks of 32 steps: the second fill starts at step 32.
  _runner(tmp_path).train(input_fn_from(), max_steps=40)
  reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-40"))
  names = set(reader.get_variable_to_shape_map())
  assert {record.STATE_KEY, record.COUNTS_KEY} <= names
  saved = record.read_saved(str(tmp_path / "model.ckpt-40"))
  assert saved.state and (saved.taken, saved.skip) == (32, 8)


def test_async_saves_hold_the_position(tmp_path):
  _runner(tmp_path, async_checkpoints=True).train(input_fn_from(),
                                                  max_steps=20)
  saved = record.read_saved(str(tmp_path / "model.ckpt-20"))
  assert saved is not None and saved.taken + saved.skip == 20


@pytest.mark.parametrize("first, then, warning", [
    # Saved without an iterator state, resumed exactly: skips instead.
    ("skip", {}, "holds no iterator state"),
    # An input_fn changed between runs: the saved position does not fit.
    ("exact", {"extra_map": True}, "saved for another input pipeline (its "
     "transformations, or the data it holds in the graph, changed)"),
])
def test_a_position_that_cannot_be_used_falls_back_to_skipping(
    tmp_path, caplog, first, then, warning):
  _runner(tmp_path / "straight").train(input_fn_from(**then), max_steps=30)
  _runner(tmp_path / "resumed", first).train(input_fn_from(), max_steps=13)
  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "resumed").train(input_fn_from(**then), max_steps=30)
  assert any(warning in r.getMessage() for r in caplog.records)
  # Skipping is exact too (extra_map maps each element to itself).
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_skipping_after_a_checkpoint_without_a_position_counts_from_step_0(
    tmp_path, caplog):
  # A run saved no position at step 10 (resume_input='restart'); the next
  # skips 10 steps from the input's start and saves none either (skip
  # mode); the one after must skip all 20, not the 10 after its start.
  fn = input_fn_from(shuffle=False)
  _runner(tmp_path / "straight", "skip").train(fn, max_steps=30)
  _runner(tmp_path / "resumed", "restart").train(fn, max_steps=10)
  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "resumed", "skip").train(fn, max_steps=20)
  assert any("holds no input position" in r.getMessage()
             for r in caplog.records)
  assert record.read_saved(
      str(tmp_path / "resumed" / "model.ckpt-20")).pass_start == 0
  _runner(tmp_path / "resumed", "skip").train(fn, max_steps=30)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))

def test_a_run_resumed_by_skipping_saves_an_exact_position_at_its_start(
    tmp_path, infeed_kind):
  # The session's first save (at the start step) comes while the first
  # loop's input is read: the state after the dropped steps is read first.
  _runner(tmp_path, "skip", kind=infeed_kind).train(
      _input_for(infeed_kind), max_steps=13)
  assert not record.read_saved(str(tmp_path / "model.ckpt-13")).state
  _runner(tmp_path, save_steps=1000, kind=infeed_kind).train(
      _input_for(infeed_kind), max_steps=16)
  saved = record.read_saved(str(tmp_path / "model.ckpt-13"))
  assert saved.state and saved.taken + saved.skip == 13


def test_an_input_that_cannot_be_saved_falls_back_to_skipping(tmp_path,
                                                              caplog):
  fn = input_fn_from(py_function=True)
  _runner(tmp_path / "straight").train(fn, max_steps=60)
  caplog.set_level(std_logging.WARNING)
  # Found when the input is built: a py_function's state lives in Python.
  _runner(tmp_path / "resumed").train(fn, max_steps=45)
  assert any("py_function (EagerPyFunc), whose state a position cannot "
             "hold" in r.getMessage() for r in caplog.records)
  saved = record.read_saved(str(tmp_path / "resumed" /
                                "model.ckpt-45"))
  assert saved.state == b"" and saved.pass_start == 0
  _runner(tmp_path / "resumed").train(fn, max_steps=60)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_an_endless_input_that_cannot_be_saved_starts_a_new_pass(tmp_path,
                                                                 caplog):
  # Reading and dropping the steps of an endless pass would cost as much
  # as training them, at every later train() and resume: a new pass starts
  # instead, as TPUEstimator's train() did.
  def fn(first_allowed=0):
    return input_fn_from(first_allowed, py_function=True, repeat=True)

  _runner(tmp_path).train(fn(), max_steps=45)
  caplog.set_level(std_logging.INFO)
  # It reads its first examples again: an input that refuses them fails.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="already trained on"):
    _runner(tmp_path).train(fn(first_allowed=64), max_steps=60)
  _runner(tmp_path).train(fn(), max_steps=60)
  messages = [r.getMessage() for r in caplog.records]
  # Said once in the process (a train-and-evaluate loop would repeat it).
  said = [m for m in messages if "a resumed run, and a later train(), "
          "start a new pass from its first element" in m]
  assert len(said) == 1, messages
  assert any("The endless training input starts a new pass at step 45"
             in m for m in messages), messages
  assert not any("Read and dropped" in m for m in messages), messages
  assert _step_of(tmp_path) == 60
  assert record.read_saved(
      str(tmp_path / "model.ckpt-60")).pass_start == 45
  # resume_input='skip' reads and drops them (the 15 of the new pass), as
  # asked.
  caplog.clear()
  _runner(tmp_path, "skip").train(fn(), max_steps=70)
  assert [r.getMessage() for r in caplog.records
          if "Read and dropped" in r.getMessage()] == [
              "Read and dropped 15 steps of train input already trained on."]
  assert _step_of(tmp_path) == 70


def test_a_finite_input_ends_where_an_uninterrupted_run_would(tmp_path):
  fn = input_fn_from(endless=False, shuffle=False)  # 50 steps of input.
  _runner(tmp_path / "straight").train(fn, max_steps=80)
  _runner(tmp_path / "resumed").train(fn, max_steps=33)
  _runner(tmp_path / "resumed").train(fn, max_steps=80)
  assert contents.checkpoint_step(
      tf.train.latest_checkpoint(str(tmp_path / "resumed"))) == 50
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_bad_resume_input_is_refused():
  with pytest.raises(ValueError, match=r"`resume_input` \('exactly'\) must "
                     r"be one of 'exact', 'skip', 'restart'"):
    th.RunConfig("/tmp/m", resume_input="exactly")


# ----------------------------------------------------------------------------
# Passes over the input: train() calls continue one; a used-up one restarts.


def _one_epoch_input_fn(params):
  """10 steps of 8 examples, shuffled, then the input ends."""
  return (tf.data.Dataset.range(80).shuffle(80).map(_examples)
          .batch(params["batch_size"], drop_remainder=True))


def _step_of(model_dir):
  return contents.checkpoint_step(tf.train.latest_checkpoint(
      str(model_dir)))


@pytest.mark.parametrize("mode", ["exact", "skip"])
@pytest.mark.parametrize("how", ["steps", "max_steps"])
def test_an_epoch_loop_of_train_calls_trains_every_epoch(tmp_path, caplog,
                                                         mode, how):
  caplog.set_level(std_logging.INFO)
  steps = []
  for epoch in range(4):
    runner = _runner(tmp_path, mode, ipl=3, save_steps=4)
    if how == "steps":
      runner.train(_one_epoch_input_fn, steps=10)
    else:
      runner.train(_one_epoch_input_fn, max_steps=10 * (epoch + 1))
    steps.append(_step_of(tmp_path))
  assert steps == [10, 20, 30, 40]
  # Exact: a used-up pass is known from the checkpoint (its end, or its
  # position at the end), so nothing is read again. Skip reads the pass.
  dropped = any("Read and dropped" in r.getMessage() for r in caplog.records)
  assert dropped == (mode == "skip")


def test_an_estimator_epoch_loop_trains_every_epoch(tmp_path):
  from support import estimator_programs as programs  # pylint: disable=import-outside-toplevel
  from tpu_harness import estimator as tf_estimator  # pylint: disable=import-outside-toplevel

  def one_epoch(params):  # 64 images: 4 steps of 16.
    x, y = programs.images(64)
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64).batch(
        params["batch_size"], drop_remainder=True)

  estimator = programs.estimator(str(tmp_path), cores=0)
  steps = []
  for _ in range(3):
    estimator.train(one_epoch)  # Until the input ends, as TPUEstimator.
    estimator.evaluate(lambda params: programs.input_fn(
        params, tf_estimator.ModeKeys.EVAL), steps=1)
    steps.append(_step_of(tmp_path))
  assert steps == [4, 8, 12]


def test_train_calls_continue_one_pass_of_an_endless_input(tmp_path):
  _runner(tmp_path / "straight").train(input_fn_from(), max_steps=24)
  for _ in range(4):  # A train(steps=N) loop feeds new input each call.
    _runner(tmp_path / "calls").train(input_fn_from(), steps=6)
  np.testing.assert_array_equal(weights(str(tmp_path / "calls")),
                                weights(str(tmp_path / "straight")))


def test_a_pass_used_up_mid_call_ends_it_and_the_next_call_starts_anew(
    tmp_path, caplog):
  fn = input_fn_from(endless=False)  # 50 steps.
  _runner(tmp_path).train(fn, max_steps=80)
  assert _step_of(tmp_path) == 50
  saved = record.read_saved(tf.train.latest_checkpoint(
      str(tmp_path)))
  assert saved.used_up and saved.pass_start == 0 and saved.state == b""
  caplog.set_level(std_logging.INFO)
  _runner(tmp_path).train(fn, max_steps=80)
  assert _step_of(tmp_path) == 80
  assert any("was used up at step 50" in r.getMessage()
             for r in caplog.records)
  saved = record.read_saved(tf.train.latest_checkpoint(
      str(tmp_path)))
  assert saved.pass_start == 50 and not saved.used_up


def test_the_checkpoints_position_stays_small_for_a_large_shuffle(tmp_path):
  images = np.random.RandomState(0).rand(6000, 784).astype(np.float32)

  def input_fn(params):
    labels = np.zeros([6000, 1], np.float32)
    return (tf.data.Dataset.from_tensor_slices((images, labels)).cache()
            .repeat().shuffle(5000)
            .map(lambda x, y: (x[:FEATURES], y))
            .batch(params["batch_size"], drop_remainder=True))

  _runner(tmp_path).train(input_fn, max_steps=700)  # Past the first window.
  for prefix in (tmp_path / "model.ckpt-690", tmp_path / "model.ckpt-700"):
    saved = record.read_saved(str(prefix))
    assert 0 < len(saved.state) < 16 * 2**10  # TF's buffer: 15.7 MB.


@pytest.mark.parametrize("kind", ["chunks", "elements"])
def test_a_shuffled_cache_resumes_exactly(tmp_path, kind):
  # cache().repeat().shuffle(): the shuffle orders indices into the cache's
  # memory; a resume reads the cache again and lands mid-window.
  def input_fn(params):
    return (tf.data.Dataset.range(90).map(_examples).cache().repeat()
            .shuffle(40).batch(params["batch_size"], drop_remainder=True))

  _runner(tmp_path / "straight", kind=kind).train(input_fn, max_steps=40)
  for stop in (17, 40):  # 17 x 8: past the first window, in a later one.
    _runner(tmp_path / "resumed", kind=kind).train(input_fn, max_steps=stop)
  assert record.read_saved(str(tmp_path / "resumed" /
                               "model.ckpt-17")).state
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


class _SavedAt(tf.compat.v1.train.CheckpointSaverListener):
  """Sets `event` once a checkpoint of `step` is saved."""

  def __init__(self, step, event):
    self._step, self._event = step, event

  def after_save(self, session, global_step_value):
    if global_step_value == self._step:
      self._event.set()


def test_a_resumed_start_saves_its_restored_position_without_waiting(
    tmp_path, monkeypatch):
  # The session's first save, at the resumed step, holds the position just
  # restored: it need not wait for the restore (which reads a cache's whole
  # input again). Here the restore waits for that save instead.
  def input_fn(params):
    return (tf.data.Dataset.range(90).map(_examples).cache().repeat()
            .shuffle(40).batch(params["batch_size"], drop_remainder=True))

  _runner(tmp_path / "straight").train(input_fn, max_steps=40)
  _runner(tmp_path / "resumed").train(input_fn, max_steps=17)
  resumed_from = str(tmp_path / "resumed" / "model.ckpt-17")
  saved_then = record.read_saved(resumed_from)
  assert saved_then.state
  first_saved = threading.Event()
  restore = host_position.HostPosition.restore

  def restore_after_the_save(self, session, state):
    if not first_saved.wait(60):
      raise RuntimeError("the first save waited for the restore")
    return restore(self, session, state)

  monkeypatch.setattr(host_position.HostPosition, "restore",
                      restore_after_the_save)
  _runner(tmp_path / "resumed").train(
      input_fn, max_steps=40, saving_listeners=[_SavedAt(17, first_saved)])
  assert record.read_saved(resumed_from) == saved_then
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


class _FailAfterSave(tf.compat.v1.train.CheckpointSaverListener):
  """Stops the run once a checkpoint of `step` is saved."""

  def __init__(self, step):
    self._step = step

  def after_save(self, session, global_step_value):
    if global_step_value == self._step:
      raise RuntimeError(f"stopped after the save at {self._step}")


def _cached_shuffled_input_fn(params):
  return (tf.data.Dataset.range(90).map(_examples).cache().repeat()
          .shuffle(40).batch(params["batch_size"], drop_remainder=True))


def test_a_new_pass_saves_its_first_position_without_waiting(
    tmp_path, monkeypatch):
  # The session's first save, at a new pass's first step, holds the pass's
  # first element and its seeds: it need not wait for the iterator's
  # initialization (which reads a cache's whole input). Here that
  # initialization waits for the save instead. Unseeded: the seeds saved
  # first are those the start drew and fed.
  first_saved = threading.Event()
  # pylint: disable-next=protected-access
  initialize = host_infeed.HostInfeed._init_iterator

  def initialize_after_the_save(self, session, before, feed=None):
    if not first_saved.wait(60):
      raise RuntimeError("the first save waited for the initialization")
    return initialize(self, session, before, feed)

  monkeypatch.setattr(host_infeed.HostInfeed, "_init_iterator",
                      initialize_after_the_save)
  config = th.RunConfig(str(tmp_path / "unseeded"), iterations_per_loop=5,
                        save_checkpoints_steps=10)
  th.Runner(linear_model_fn, config, train_batch_size=BATCH).train(
      _cached_shuffled_input_fn, max_steps=17,
      saving_listeners=[_SavedAt(0, first_saved)])
  monkeypatch.undo()
  first = record.read_saved(str(tmp_path / "unseeded" / "model.ckpt-0"))
  later = record.read_saved(str(tmp_path / "unseeded" / "model.ckpt-10"))
  assert (first.state, first.skip, first.taken, first.pass_start) == (
      b"", 0, 0, 0)
  # Saved in the first fill (17 steps): the pass's start, 10 steps to drop.
  assert (later.state, later.skip, later.pass_start) == (b"", 10, 0)
  assert len(first.seeds) == 1 and first.seeds == later.seeds
  assert first.fingerprint == later.fingerprint
  # Resumed from that first checkpoint: the pass from its first element,
  # with those seeds, as an uninterrupted run.
  _runner(tmp_path / "straight").train(_cached_shuffled_input_fn,
                                       max_steps=17)
  with pytest.raises(RuntimeError, match="after the save at 0"):
    _runner(tmp_path / "resumed").train(
        _cached_shuffled_input_fn, max_steps=17,
        saving_listeners=[_FailAfterSave(0)])
  assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith(
      "model.ckpt-0")
  _runner(tmp_path / "resumed").train(_cached_shuffled_input_fn,
                                      max_steps=17)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_a_save_in_the_first_fill_holds_the_pass_start_unread(
    tmp_path, monkeypatch, caplog):
  # The state at a new pass's first element is its start: no state is read
  # for a save in the first fill (20 steps here), which holds the pass's
  # start and the steps to drop; the input resumes by starting the pass
  # again and dropping them, with no warning, exactly.
  states_read = []
  read_state = host_position.HostPosition._read_state
  monkeypatch.setattr(host_position.HostPosition, "_read_state",
                      lambda self, session: states_read.append(1)
                      or read_state(self, session))
  with pytest.raises(RuntimeError, match="after the save at 10"):
    _runner(tmp_path / "resumed").train(
        input_fn_from(), max_steps=20, saving_listeners=[_FailAfterSave(10)])
  assert not states_read
  saved = record.read_saved(str(tmp_path / "resumed" / "model.ckpt-10"))
  assert (saved.state, saved.skip, saved.taken, saved.pass_start) == (
      b"", 10, 0, 0)
  caplog.set_level(std_logging.INFO)
  _runner(tmp_path / "resumed").train(input_fn_from(), max_steps=30)
  assert not [r.getMessage() for r in caplog.records
              if r.levelno >= std_logging.WARNING and r.name == "absl"]
  assert "Read and dropped 10 steps of train input already trained on." in [
      r.getMessage() for r in caplog.records]
  _runner(tmp_path / "straight").train(input_fn_from(), max_steps=30)
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_random_augmentation_keeps_an_exact_position(tmp_path, caplog):
  def input_fn(params):  # A stateful random op, valued so as not to matter.
    dataset = tf.data.Dataset.range(10**9).shuffle(64).map(_examples)
    return dataset.map(lambda x, y: (
        x + 0.0 * tf.random.uniform([FEATURES]), y)).batch(
            params["batch_size"], drop_remainder=True)

  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "straight").train(input_fn, max_steps=40)
  for stop in (17, 40):
    _runner(tmp_path / "resumed").train(input_fn, max_steps=stop)
  assert record.read_saved(str(tmp_path / "resumed" /
                               "model.ckpt-17")).state
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))
  warnings = [r.getMessage() for r in caplog.records
              if "stateful random ops (RandomUniform)" in r.getMessage()]
  assert len(warnings) == 1  # Once per process.
  # TF's own line per element is named, with what hides it.
  assert "is stateful\" for every element" in warnings[0]
  assert "TF_CPP_MIN_LOG_LEVEL=2" in warnings[0]


def _write_records(path, padding, first=0):
  """Examples `first`..`first` + 399 as records: the index's 8 bytes, then
  `padding` bytes (another export of the same examples; a callable:
  `padding(index)` bytes)."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for index in range(first, first + 400):
      pad = padding(index) if callable(padding) else padding
      writer.write(np.int64(index).tobytes() + b"\0" * pad)


def _records_input_fn(path, shuffle=True, endless=True):
  def input_fn(params):
    dataset = tf.data.TFRecordDataset(str(path))
    if endless:
      dataset = dataset.repeat()
    dataset = dataset.map(
        lambda record: tf.io.decode_raw(tf.strings.substr(record, 0, 8),
                                        tf.int64)[0])
    if shuffle:
      dataset = dataset.shuffle(64, seed=7)
    return dataset.map(_examples).batch(params["batch_size"],
                                        drop_remainder=True)
  return input_fn


@pytest.mark.parametrize("endless", [False, True])
def test_a_position_saved_for_other_files_is_not_restored(tmp_path, caplog,
                                                          endless):
  """The records were re-exported with other sizes between runs: the saved
  offset would read garbage ("corrupted record"); the position's
  fingerprint tells, and the run skips instead (an endless input: starts
  a new pass), saying why."""
  records = tmp_path / "train.tfrecord"
  fn = _records_input_fn(records, endless=endless)
  _write_records(records, padding=0)
  _runner(tmp_path / "model").train(fn, max_steps=13)
  then = os.path.getsize(records)
  _write_records(records, padding=3)
  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "model").train(fn, max_steps=30)
  assert contents.checkpoint_step(
      tf.train.latest_checkpoint(str(tmp_path / "model"))) == 30
  warnings = [r.getMessage() for r in caplog.records
              if "is not restored" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert (f"saved for another input pipeline ({records} has "
          f"{os.path.getsize(records)} bytes, {then} then)") in warnings[0]
  assert ("starts a new pass" in warnings[0]) == endless
  assert ("resume_input='exact'" in warnings[0]) != endless
  assert record.read_saved(str(tmp_path / "model" / "model.ckpt-30")
                           ).pass_start == (13 if endless else 0)


@pytest.mark.parametrize("shuffle, failing", [
    # The window shuffle re-reads on restore: the restore fails.
    (True, "does not fit this input pipeline"),
    # A plain reader seeks on restore: the first read after it fails.
    (False, "right after restoring"),
])
def test_a_stale_offset_is_named_and_skipped_instead(tmp_path, caplog,
                                                     shuffle, failing):
  """Re-exported records of the same total size (the first record's
  padding moved to the last): the fingerprint cannot tell, the restored
  offset lands inside a record. The run says which position failed and
  trains on, reading and dropping the pass's steps instead; the weights
  are an uninterrupted run's on the new files (the same examples)."""
  records = tmp_path / "train.tfrecord"
  # A finite input (400 examples, 50 steps): an endless one would start a
  # new pass instead of reading and dropping its steps.
  fn = _records_input_fn(records, shuffle, endless=False)
  _write_records(records, padding=lambda index: 4 * (index == 399))
  _runner(tmp_path / "straight").train(fn, max_steps=30)
  _write_records(records, padding=lambda index: 4 * (index == 0))
  _runner(tmp_path / "model").train(fn, max_steps=13)
  then = os.path.getsize(records)
  _write_records(records, padding=lambda index: 4 * (index == 399))
  assert os.path.getsize(records) == then
  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "model").train(fn, max_steps=30)
  warnings = [r.getMessage() for r in caplog.records
              if failing in r.getMessage()]
  assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
  assert "model.ckpt-13" in warnings[0]
  assert "resume_input='exact'" in warnings[0]
  assert "corrupted record at " in warnings[0]
  assert "reading and dropping the" in warnings[0].lower()
  np.testing.assert_array_equal(weights(str(tmp_path / "model")),
                                weights(str(tmp_path / "straight")))


def test_a_stale_offset_of_an_endless_input_starts_a_new_pass(tmp_path,
                                                              caplog):
  """As above (the restore itself fails), for an endless input: a new pass
  from its first element, not its pass's steps read and dropped."""
  records = tmp_path / "train.tfrecord"
  fn = _records_input_fn(records, shuffle=True, endless=True)
  _write_records(records, padding=lambda index: 4 * (index == 0))
  _runner(tmp_path / "model").train(fn, max_steps=13)
  _write_records(records, padding=lambda index: 4 * (index == 399))
  caplog.set_level(std_logging.INFO)
  _runner(tmp_path / "model").train(fn, max_steps=30)
  messages = [r.getMessage() for r in caplog.records]
  warnings = [m for m in messages if "does not fit this input pipeline" in m]
  assert len(warnings) == 1, messages
  assert ("The input is endless (repeat()): it starts a new pass from its "
          "first element instead of reading and dropping the 13 steps"
          in warnings[0]), warnings[0]
  assert not any("Read and dropped" in m for m in messages), messages
  assert record.read_saved(str(tmp_path / "model" / "model.ckpt-30")
                           ).pass_start == 13


def _unordered_records_input_fn(path, fused):
  """Records parsed by a map with num_parallel_calls and
  deterministic=False (elements given as they are ready). `fused`: the
  map feeds the batch straight away, and tf.data fuses the two into a
  map_and_batch, which gives its batches in order; else efficientnet's
  shape: the order asked of the pipeline's options, the parallel maps
  left at deterministic's default, one of them after the batch."""
  def parse(record):
    return tf.io.decode_raw(tf.strings.substr(record, 0, 8), tf.int64)[0]

  def input_fn(params):
    dataset = tf.data.TFRecordDataset(str(path)).repeat()
    if fused:
      dataset = dataset.map(lambda r: _examples(parse(r)),
                            num_parallel_calls=4, deterministic=False)
      return dataset.batch(params["batch_size"], drop_remainder=True)
    dataset = dataset.map(lambda r: _examples(parse(r)), 4).batch(
        params["batch_size"], drop_remainder=True)
    dataset = dataset.map(lambda x, y: (tf.reshape(x, [-1, FEATURES]), y),
                          num_parallel_calls=4)
    options = tf.data.Options()
    options.experimental_deterministic = False
    return dataset.with_options(options)
  return input_fn


def test_a_parallel_map_fused_with_its_batch_keeps_an_exact_position(
    tmp_path):
  records = tmp_path / "train.tfrecord"
  _write_records(records, padding=0)
  fn = _unordered_records_input_fn(records, fused=True)
  _runner(tmp_path / "straight").train(fn, max_steps=30)
  for stop in (13, 30):
    _runner(tmp_path / "resumed").train(fn, max_steps=stop)
  assert record.read_saved(str(tmp_path / "resumed" /
                               "model.ckpt-13")).state
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))


def test_an_unordered_parallel_map_keeps_no_position_found_when_built(
    tmp_path, caplog):
  """tf.data cannot save a non-deterministic parallel map's position
  symbolically (which elements it has given depends on which calls
  finished first): found when the input is built, one warning naming
  the op and what makes it exact, and no save tried and failed (which
  TF logs on stderr, three lines per save; was: found at the first
  save, "the input pipeline's state cannot be saved")."""
  records = tmp_path / "train.tfrecord"
  _write_records(records, padding=0)
  fn = _unordered_records_input_fn(records, fused=False)
  caplog.set_level(std_logging.WARNING)
  _runner(tmp_path / "model").train(fn, max_steps=13)
  messages = [r.getMessage() for r in caplog.records]
  warnings = [m for m in messages if "not saved with checkpoints" in m]
  assert len(warnings) == 1, messages
  assert "ParallelMapDatasetV2" in warnings[0]
  assert "deterministic" in warnings[0]
  assert "resume_input='skip'" in warnings[0]
  assert not any("cannot be saved" in m for m in messages), messages
  saved = record.read_saved(str(tmp_path / "model" / "model.ckpt-13"))
  assert saved.state == b"" and saved.pass_start == 0
  _runner(tmp_path / "model").train(fn, max_steps=30)
  assert contents.checkpoint_step(
      tf.train.latest_checkpoint(str(tmp_path / "model"))) == 30


def _parallel_reader(files, how):
  """A dataset of `files`' records, repeated, read in parallel in their
  order, as TPU programs read TFRecords."""
  names = tf.data.Dataset.from_tensor_slices(files).repeat()
  if how == "interleave":
    return names.interleave(tf.data.TFRecordDataset, cycle_length=2,
                            num_parallel_calls=2)
  if how == "parallel_interleave":
    return names.apply(tf.data.experimental.parallel_interleave(
        tf.data.TFRecordDataset, cycle_length=2, sloppy=False))
  return tf.data.TFRecordDataset(files, num_parallel_reads=2).repeat()


@pytest.mark.parametrize("how", ["interleave", "parallel_interleave",
                                 "num_parallel_reads"])
def test_files_read_in_parallel_in_order_resume_exactly(tmp_path, caplog,
                                                        how):
  """Files read in parallel, in their order: interleave(num_parallel_calls),
  parallel_interleave(sloppy=False), TFRecordDataset(num_parallel_reads).
  tf.data's restored parallel interleave stopped giving elements once its
  restored files ended (TF 2.21: the host's fill never returned, this test
  hung); the rewrite reads them with an interleave of prefetched files,
  whose position restores."""
  files = []
  for part in range(4):
    files.append(str(tmp_path / f"train-{part}.tfrecord"))
    # Each file its own examples: a new pass would train on others.
    _write_records(files[-1], padding=0, first=400 * part)

  def input_fn(params):
    dataset = _parallel_reader(files, how).map(
        lambda record: _examples(tf.io.decode_raw(
            tf.strings.substr(record, 0, 8), tf.int64)[0]))
    return dataset.batch(params["batch_size"], drop_remainder=True)

  # Loops of 100 steps, as TPU programs run them (with loops of 5 the
  # restored interleave went on, by chance of timing), resumed past the
  # restored files' ends.
  def runner(name):
    return _runner(tmp_path / name, ipl=100, save_steps=1000)

  runner("straight").train(input_fn, max_steps=700)
  caplog.set_level(std_logging.WARNING)
  for stop in (150, 700):
    runner("resumed").train(input_fn, max_steps=stop)
  warned = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert not warned, warned  # Neither a position not kept nor a new pass.
  saved = record.read_saved(str(tmp_path / "resumed" / "model.ckpt-150"))
  assert saved.state
  np.testing.assert_array_equal(weights(str(tmp_path / "resumed")),
                                weights(str(tmp_path / "straight")))
