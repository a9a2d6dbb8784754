"""step_input: per-step layouts of the input across replicas."""

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_fixtures import make_runner
from support.runner_models import train_input_fn
from tpu_harness import _tf_internals
from tpu_harness.loops import step_input


def _elements(dataset):
  iterator = tf.compat.v1.data.make_one_shot_iterator(dataset)
  element = iterator.get_next()
  out = []
  with tf.compat.v1.Session() as session:
    while True:
      try:
        out.append(session.run(element))
      except tf.errors.OutOfRangeError:
        return out


def _rows(n):
  return tf.data.Dataset.from_tensor_slices(
      (np.arange(n, dtype=np.float32).reshape(n, 1),
       np.arange(n, dtype=np.int32)))


@pytest.mark.parametrize("shards, per_host, stack_one, first_features", [
    # PER_HOST_V2: each replica its own consecutive batch of 2.
    (2, False, False, [[[0], [1]], [[2], [3]]]),
    # PER_HOST_V1: one batch of 2 split between the replicas.
    (2, True, False, [[[0]], [[1]]]),
    # One replica: the batch as it is, or stacked on a first axis of 1.
    (1, False, False, [[0], [1]]),
    (1, False, True, [[[0], [1]]]),
    (1, True, True, [[[0], [1]]]),
])
def test_per_step_layouts(shards, per_host, stack_one, first_features):
  dataset = step_input.per_step(_rows(8).batch(2, drop_remainder=True), shards, per_host,
                                stack_one=stack_one)
  features, labels = _elements(dataset)[0]
  np.testing.assert_array_equal(features, first_features)
  np.testing.assert_array_equal(labels, np.array(first_features)[..., 0])


def test_a_global_batch_that_does_not_split_is_refused():
  with pytest.raises(th.InputShapeError, match=r"A batch of 3 rows \(features\) cannot be "
                     "split among 2 replicas"):
    step_input.per_step(_rows(6).batch(3, drop_remainder=True), 2, per_host=True)


def test_predict_input_pads_rows_and_shards():
  dataset = tf.data.Dataset.from_tensor_slices(
      np.arange(5, dtype=np.float32).reshape(5, 1)).batch(2)
  padded = step_input.padded_predict_input(dataset, batch_size=2,
                                           num_shards=2)
  assert padded.element_spec[0].shape == (2, 2, 1)
  iterator = tf.compat.v1.data.make_one_shot_iterator(padded)
  element = iterator.get_next()
  with tf.compat.v1.Session() as session:
    first = session.run(element)
    second = session.run(element)
  np.testing.assert_array_equal(first[1], [2, 2])
  np.testing.assert_array_equal(second[1], [1, 0])
  np.testing.assert_array_equal(second[0][:, :, 0], [[4, 0], [0, 0]])


def test_predict_input_with_unknown_feature_shape_is_rejected():
  dataset = tf.data.Dataset.from_generator(
      lambda: iter([np.zeros((2, 3), np.float32)]),
      output_signature=tf.TensorSpec([None, None], tf.float32))
  with pytest.raises(th.InputShapeError, match="after the first are fixed; "
                     r"features has shape \(None, None\)"):
    step_input.padded_predict_input(dataset, 2, 1)


def _first(dataset, count):
  get = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
  with tf.compat.v1.Session() as session:
    return [session.run(get) for _ in range(count)]


def _pairs(params):
  x = np.arange(24, dtype=np.float32).reshape(12, 2)
  return tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2)).batch(
      params["batch_size"], drop_remainder=True)


@pytest.mark.parametrize("returns", ["pair", "features_dict"])
def test_input_fn_may_return_tensors_read_from_an_iterator(returns):
  """TPUEstimator programs' `features, labels =
  make_one_shot_iterator().get_next()`: the tensors stand for the dataset."""
  def input_fn(params):
    features, labels = tf.compat.v1.data.make_one_shot_iterator(
        _pairs(params)).get_next()
    if returns == "pair":
      return features, labels
    return {"x": features}

  with tf.Graph().as_default():
    dataset = step_input.make_input(input_fn, {"batch_size": 4},
                                    th.ModeKeys.TRAIN if returns == "pair"
                                    else th.ModeKeys.PREDICT)
    got = _first(dataset, 3)
  with tf.Graph().as_default():
    want = _first(_pairs({"batch_size": 4}), 3)
  for (features, labels), element in zip(want, got):
    if returns == "pair":
      np.testing.assert_array_equal(element[0], features)
      np.testing.assert_array_equal(element[1], labels)
    else:
      np.testing.assert_array_equal(element["x"], features)


def test_input_fn_may_return_tensors_computed_from_an_iterator(tmp_path):
  """mobilenet's `images, labels = make_one_shot_iterator().get_next();
  images = tf.reshape(images, ...)` over a list_files pipeline (a stateful
  seed generator): the ops between the iterator and the tensors run on
  each element of its dataset, as TPUEstimator ran them each step."""
  for part in range(2):
    with tf.io.TFRecordWriter(str(tmp_path / f"part-{part}")) as writer:
      for index in range(6):
        writer.write(np.float32([part * 6 + index] * 4).tobytes())

  def input_fn(params):
    files = tf.data.Dataset.list_files(str(tmp_path / "part-*"),
                                       shuffle=False)
    dataset = files.flat_map(tf.data.TFRecordDataset).map(
        lambda record: tf.io.decode_raw(record, tf.float32)).batch(
            params["batch_size"], drop_remainder=True)
    rows = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    images = tf.reshape(rows, [params["batch_size"], 2, 2, 1]) / 2.0
    return {"image": images}, tf.cast(rows[:, 0], tf.int32) % 3

  with tf.Graph().as_default():
    dataset = step_input.make_input(input_fn, {"batch_size": 4},
                                    th.ModeKeys.TRAIN)
    assert dataset.element_spec[0]["image"].shape.as_list() == [4, 2, 2, 1]
    got = _first(dataset, 3)
  for batch, (features, labels) in enumerate(got):
    first = np.arange(batch * 4, batch * 4 + 4, dtype=np.float32)
    np.testing.assert_array_equal(features["image"][:, 0, 0, 0], first / 2)
    np.testing.assert_array_equal(labels, first.astype(np.int32) % 3)


def test_tensors_computed_from_an_iterator_and_a_variable_are_refused_a_copy(
    ):
  """A computation that reads the graph's state (here a variable) cannot
  move into the dataset: `input_fn` is called again per batch instead
  (the fake-data path), as before."""
  def input_fn(params):
    scale = tf.compat.v1.get_variable("scale", initializer=2.0,
                                      use_resource=True)
    features, labels = tf.compat.v1.data.make_one_shot_iterator(
        _pairs(params)).get_next()
    return features * scale, labels

  with tf.Graph().as_default():
    with _tf_internals.iterators_made() as made:
      returned = input_fn({"batch_size": 4})
    assert len(made) == 1
    assert step_input._lifted(  # pylint: disable=protected-access
        returned, list(returned), made) is None
    # Without the variable the same computation is lifted.
    features, labels = tf.compat.v1.data.make_one_shot_iterator(
        _pairs({"batch_size": 4})).get_next()
    with _tf_internals.iterators_made() as made:
      features, labels = tf.compat.v1.data.make_one_shot_iterator(
          _pairs({"batch_size": 4})).get_next()
    assert step_input._lifted(  # pylint: disable=protected-access
        (features * 2.0, labels), [features * 2.0, labels], made) is not None


def test_input_fn_may_return_fake_data_tensors_made_anew_each_batch():
  """Random fake data, as TPU programs make without a data_dir: new values
  each batch, as TPUEstimator ran the ops each step."""
  def input_fn(params):
    features = tf.random.uniform([params["batch_size"], 3])
    return features, tf.zeros([params["batch_size"], 1], tf.int32)

  with tf.Graph().as_default():
    dataset = step_input.make_input(input_fn, {"batch_size": 4},
                                    th.ModeKeys.TRAIN)
    assert dataset.element_spec[0].shape.as_list() == [4, 3]
    first, second = _first(dataset, 2)
  assert not np.array_equal(first[0], second[0])


@pytest.mark.parametrize("returned", [[1, 2], None, "data"])
def test_input_fn_returning_neither_a_dataset_nor_tensors(returned):
  with tf.Graph().as_default():
    with pytest.raises(TypeError, match=r"`input_fn` must return a "
                       r"tf.data.Dataset, or tensors: \(features, labels\) "
                       r"or features"):
      step_input.make_input(lambda params: returned, {"batch_size": 4},
                            th.ModeKeys.TRAIN)


def test_a_one_shot_iterator_over_a_shuffle_trains(tmp_path):
  """squeezenet style: `dataset.shuffle(...)` then
  `make_one_shot_iterator().get_next()` in the training input_fn, whose
  shuffle is made resumable (a one-shot iterator could not capture it)."""
  def input_fn(params):
    dataset = train_input_fn()(params).unbatch().shuffle(64, seed=3).batch(
        params["batch_size"], drop_remainder=True)
    return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()

  runner = make_runner(tmp_path, ipl=5, save_steps=5)
  runner.train(input_fn, max_steps=10)
  assert tf.train.load_checkpoint(runner.latest_checkpoint()).get_tensor(
      "global_step") == 10


def _features_only(params):
  """bert's input: a dict Dataset, the label among the features."""
  x = np.arange(24, dtype=np.float32).reshape(12, 2)
  return tf.data.Dataset.from_tensor_slices(
      {"x": x, "label_ids": np.arange(12, dtype=np.int32)}).batch(
          params["batch_size"], drop_remainder=True)


def _iterator_tensors(dataset):
  return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()


# What TPUEstimator read as features alone (model_fn's labels None), in
# every mode: a dict or a tensor, from a Dataset or from tensors, and
# (features, None).
_FEATURES_ALONE = {
    "dict dataset": _features_only,
    "tensor dataset": lambda params: _features_only(params).map(
        lambda features: features["x"]),
    "(features, None) dataset": lambda params: _features_only(params).map(
        lambda features: (features, None)),
    "dict iterator tensors": lambda params: _iterator_tensors(
        _features_only(params)),
    "tensor iterator tensors": lambda params: _iterator_tensors(
        _features_only(params))["x"],
    "(features, None) tensors": lambda params: (
        _iterator_tensors(_features_only(params)), None),
    "fake data (features, None)": lambda params: (
        {"x": tf.zeros([params["batch_size"], 2]),
         "label_ids": tf.zeros([params["batch_size"]], tf.int32)}, None),
}


@pytest.mark.parametrize("mode", [th.ModeKeys.TRAIN, th.ModeKeys.EVAL,
                                  th.ModeKeys.PREDICT])
@pytest.mark.parametrize("name", sorted(_FEATURES_ALONE))
def test_input_fn_may_return_features_alone_in_every_mode(name, mode):
  with tf.Graph().as_default():
    dataset = step_input.make_input(_FEATURES_ALONE[name],
                                    {"batch_size": 4}, mode)
    spec = dataset.element_spec
    features, labels = step_input.features_and_labels(spec)
    assert labels is None
    x = features["x"] if isinstance(features, dict) else features
    assert x.shape.as_list() == [4, 2]
    if "fake" not in name:
      first = _first(dataset, 1)[0]
      np.testing.assert_array_equal(
          first["x"] if isinstance(first, dict) else first,
          np.arange(8).reshape(4, 2))
    expected = (["features['label_ids']", "features['x']"]
                if isinstance(features, dict) else ["features"])
    assert step_input.element_names(spec) == expected


@pytest.mark.parametrize("returned", [
    lambda params: tf.data.Dataset.from_tensors((tf.zeros([4, 2]),)),
    lambda params: tf.data.Dataset.from_tensors(
        (tf.zeros([4, 2]), tf.zeros([4]), tf.zeros([4]))),
    lambda params: [tf.zeros([4, 2]), tf.zeros([4]), tf.zeros([4])],
], ids=["1-tuple", "3-tuple", "list of 3 tensors"])
@pytest.mark.parametrize("mode", [th.ModeKeys.TRAIN, th.ModeKeys.PREDICT])
def test_tuples_of_other_than_two_are_refused(returned, mode):
  # TPUEstimator unpacked a tuple as (features, labels); Estimator refused
  # a tuple or list of another length.
  with tf.Graph().as_default():
    with pytest.raises(TypeError, match=r"\(features, labels\) as a tuple "
                       r"of two, or features alone .* its elements are a "
                       r"tuple of [13]"):
      step_input.make_input(returned, {"batch_size": 4}, mode)

