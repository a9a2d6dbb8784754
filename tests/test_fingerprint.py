"""tpu_harness._infeed.fingerprint: what a training input pipeline is, to
tell whether a saved position fits the one a resumed run builds."""

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness._infeed import fingerprint


def _of(make):
  with tf.Graph().as_default():
    return fingerprint.of(make())


def _records(path, sizes):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for size in sizes:
      writer.write(b"x" * size)


def _files_pipeline(pattern):
  return lambda: (tf.data.Dataset.list_files(pattern, shuffle=False)
                  .interleave(tf.data.TFRecordDataset).shuffle(16, seed=1)
                  .batch(4))


def _slices(data):
  return lambda: tf.data.Dataset.from_tensor_slices(data).map(
      lambda x: x * 2.0).shuffle(8, seed=1).batch(2)


def test_the_same_pipeline_built_twice_has_one_fingerprint(tmp_path):
  _records(tmp_path / "a.tfrecord", [10, 20])
  make = _files_pipeline(str(tmp_path / "*.tfrecord"))
  assert _of(make) == _of(make)
  data = np.arange(12, dtype=np.float32)
  assert _of(_slices(data)) == _of(_slices(data))


def test_a_constant_inside_a_map_is_not_part_of_it():
  def make(scale):
    return lambda: tf.data.Dataset.range(100).map(
        lambda i: tf.cast(i, tf.float32) * scale).batch(2)
  assert _of(make(2.0)) == _of(make(3.0))


@pytest.mark.parametrize("change,what", [
    (lambda d: d + 100.0, "its transformations, or the data it holds"),
    (lambda d: d.reshape(6, 2), "its transformations"),  # Element shape.
])
def test_changed_data_or_shapes_differ(change, what):
  data = np.arange(12, dtype=np.float32)
  found = _of(_slices(change(data))).differences(_of(_slices(data)))
  assert len(found) == 1 and found[0].startswith(what)


def test_range_bounds_differ():
  then = _of(lambda: tf.data.Dataset.range(0, 100).batch(2))
  now = _of(lambda: tf.data.Dataset.range(100, 200).batch(2))
  assert now.differences(then)


def test_re_exported_files_differ_by_size_and_name(tmp_path):
  make = _files_pipeline(str(tmp_path / "*.tfrecord"))
  _records(tmp_path / "a.tfrecord", [10, 20])
  _records(tmp_path / "b.tfrecord", [5])
  then = _of(make)
  # Each record: its bytes and 16 of length and checksums.
  assert then.files == {str(tmp_path / "a.tfrecord"): 62,
                        str(tmp_path / "b.tfrecord"): 21}
  _records(tmp_path / "a.tfrecord", [11, 20])  # Same records, one longer.
  (tmp_path / "b.tfrecord").unlink()
  _records(tmp_path / "c.tfrecord", [5])
  found = _of(make).differences(then)
  a = str(tmp_path / "a.tfrecord")
  assert found == [f"{a} has {then.files[a] + 1} bytes, {then.files[a]} then",
                   f"it no longer reads {tmp_path / 'b.tfrecord'}",
                   f"it reads {tmp_path / 'c.tfrecord'}, which it did not"]


@pytest.mark.parametrize("text", ["", "{", "[]", '{"graph": "x"}',
                                  '{"graph": "x", "files": {"a": "b"}}'])
def test_an_unreadable_saved_fingerprint_is_none(text):
  assert fingerprint.Fingerprint.from_json(text) is None


def test_json_round_trip():
  value = fingerprint.Fingerprint(graph="abc", files={"/d/a": 3})
  assert fingerprint.Fingerprint.from_json(value.to_json()) == value


def test_functions_are_found_in_an_order_of_their_own():
  """An op with two functions (the `If` of a `tf.cond` in a `map`: the
  materialized cache's, tf.image's random flips): its NodeDef's attribute
  map iterates in no fixed order, which differed between two builds of one
  pipeline in a long process (seen in scripts/bench/estimator under load):
  the function bodies then came in another order, the fingerprint
  differed, and exact resume fell back to skipping. Here the two orders
  are two dicts."""
  from tpu_harness import _tf_internals  # pylint: disable=g-import-not-at-top

  def attrs(order):
    return {key: tf.compat.v1.AttrValue(
        func=tf.compat.v1.NameAttrList(name=key + "_fn")) for key in order}

  found = [_tf_internals._function_names(attrs(order))  # pylint: disable=protected-access
           for order in (["then_branch", "else_branch"],
                         ["else_branch", "then_branch"])]
  assert found[0] == found[1] == ["else_branch_fn", "then_branch_fn"]
