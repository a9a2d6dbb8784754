"""hooks.checkpointer.Checkpointer: the save itself (the Saver in use, or a
background write; non-finite weights refused), apart from the hook's
schedule and listeners. Real sessions, real checkpoint files."""

import numpy as np
import pytest
import tensorflow as tf

import hooks
from hooks.checkpointer import Checkpointer


def _weight():
  """A variable `w` = 2.0 in the default graph, beside the global step."""
  tf.compat.v1.train.get_or_create_global_step()
  return tf.compat.v1.get_variable("w", initializer=tf.constant(2.0),
                                   use_resource=True)


def _checking(prefix: str, async_save: bool) -> Checkpointer:
  """A Checkpointer refusing non-finite weights, begun in the default graph
  (which holds its variables)."""
  checkpointer = Checkpointer(prefix, saver=tf.compat.v1.train.Saver(),
                              async_save=async_save, check_finite=True,
                              save_graph_def=False)
  checkpointer.begin()
  return checkpointer


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_save_completes_at_once_or_when_its_write_finishes(tmp_path,
                                                             async_save):
  _weight()
  prefix = str(tmp_path / "model.ckpt")
  checkpointer = Checkpointer(prefix, saver=tf.compat.v1.train.Saver(),
                              async_save=async_save, save_graph_def=False)
  checkpointer.begin()
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    checkpointer.session_created(meta_graph=None, finalized=True)
    assert checkpointer.save(session, 7) == (None if async_save else 7)
    assert checkpointer.finish(wait=True) == (7 if async_save else None)
    checkpointer.close()
  assert checkpointer.latest_saved == f"{prefix}-7"
  assert tf.train.latest_checkpoint(str(tmp_path)) == f"{prefix}-7"
  assert tf.train.load_checkpoint(f"{prefix}-7").get_tensor("w") == 2.0


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_non_finite_weights_are_refused_naming_the_newest_checkpoint(
    tmp_path, async_save):
  weight = _weight()
  poison = weight.assign(np.nan)
  prefix = str(tmp_path / "model.ckpt")
  checkpointer = _checking(prefix, async_save)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    checkpointer.session_created(meta_graph=None, finalized=True)
    checkpointer.save(session, 1)
    checkpointer.finish(wait=True)
    session.run(poison)
    with pytest.raises(hooks.NonFiniteWeightsError,
                       match=(r"Variables \['w'\] hold NaN or Inf at step 2; "
                              r"their checkpoint was not saved, and the "
                              r"newest checkpoint is still "
                              + f"{prefix}-1")):
      checkpointer.save(session, 2)
    assert checkpointer.finish(wait=True) is None
    checkpointer.close()
  assert tf.train.latest_checkpoint(str(tmp_path)) == f"{prefix}-1"
  assert not tf.io.gfile.glob(f"{prefix}-2*")


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("poisoned, refused", [
    ({}, []),
    ({"b": np.inf}, ["b"]),
    ({"c": np.nan, "a": -np.inf}, ["a", "c"]),  # Every one, sorted.
])
def test_every_non_finite_floating_variable_is_named(tmp_path, async_save,
                                                      poisoned, refused):
  tf.compat.v1.train.get_or_create_global_step()
  dtypes = {"a": tf.float32, "b": tf.float16, "c": tf.float64}
  weights = {name: tf.compat.v1.get_variable(
      name, initializer=tf.ones([3], dtype), use_resource=True)
             for name, dtype in dtypes.items()}
  # Not floating point: not checked.
  tf.compat.v1.get_variable("n", initializer=tf.constant([7]),
                            use_resource=True)
  poison = [weights[name][1].assign(tf.constant(value, dtypes[name]))
            for name, value in poisoned.items()]
  prefix = str(tmp_path / "model.ckpt")
  checkpointer = _checking(prefix, async_save)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(poison)
    checkpointer.session_created(meta_graph=None, finalized=True)
    if refused:
      with pytest.raises(hooks.NonFiniteWeightsError,
                         match=(r"Variables \[" + ", ".join(
                             f"'{name}'" for name in refused)
                                + r"\] hold NaN or Inf at step 3")):
        checkpointer.save(session, 3)
    else:
      checkpointer.save(session, 3)
    checkpointer.finish(wait=True)
    checkpointer.close()
  assert bool(tf.io.gfile.glob(f"{prefix}-3*")) == (not refused)

@pytest.mark.parametrize("given, in_collection, expected", [
    ("saver", 1, "given"),
    ("scaffold", 0, "scaffold's"),
    (None, 1, "collection's"),
])
def test_the_saver_in_use(given, in_collection, expected):
  _weight()
  savers = {"given": tf.compat.v1.train.Saver(),
            "scaffold's": tf.compat.v1.train.Saver()}
  for _ in range(in_collection):
    savers["collection's"] = tf.compat.v1.train.Saver()
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SAVERS,
                                   savers["collection's"])
  checkpointer = Checkpointer(
      "/unused/model.ckpt",
      saver=savers["given"] if given == "saver" else None,
      scaffold=(tf.compat.v1.train.Scaffold(saver=savers["scaffold's"])
                if given == "scaffold" else None))
  assert checkpointer.saver() is savers[expected]


@pytest.mark.parametrize("scaffold, in_collection, message", [
    (False, 0, r"found no saver: pass `saver=` or `scaffold=`"),
    (False, 2, r"found 2 savers in the tf.compat.v1.GraphKeys.SAVERS "
     r"collection; pass the one to use as `saver=`"),
    (True, 1, r"The `scaffold` passed to CheckpointSaverHook has no saver "
     r"yet"),
])
def test_no_saver_to_use_is_a_clear_runtime_error(scaffold, in_collection,
                                                  message):
  _weight()
  for _ in range(in_collection):
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SAVERS,
                                   tf.compat.v1.train.Saver())
  checkpointer = Checkpointer(
      "/unused/model.ckpt",
      scaffold=tf.compat.v1.train.Scaffold() if scaffold else None)
  with pytest.raises(RuntimeError, match=message):
    checkpointer.saver()
