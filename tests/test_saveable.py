"""What of a built training input a saved position can hold: what
`saveable.inspect` finds, pipeline by pipeline, against what TF refuses."""

import pytest
import tensorflow as tf

from tpu_harness._infeed import rewrite as resumable_input
from tpu_harness._infeed import saveable
from support.iterators import session_values


@pytest.fixture(autouse=True)
def graph_mode():
  with tf.Graph().as_default():
    yield


def test_inspect_reports_what_a_position_cannot_hold(tmp_path):
  graph = tf.compat.v1.get_default_graph()
  plain = tf.data.Dataset.range(9).shuffle(3)  # Outside the rewrite.
  with resumable_input.rewriting(graph) as rewrite:
    to_file = tf.data.Dataset.range(9).cache(str(tmp_path / "cache"))
  generated = tf.data.Dataset.from_generator(
      lambda: iter(range(3)), output_signature=tf.TensorSpec([], tf.int64))
  python = tf.data.Dataset.range(3).map(
      lambda i: tf.py_function(lambda v: v, [i], tf.int64))
  legacy_interleave = tf.data.Dataset.range(3).apply(
      tf.data.experimental.parallel_interleave(
          lambda i: tf.data.Dataset.from_tensors(i), cycle_length=2))
  augmented = tf.data.Dataset.range(3).map(
      lambda i: tf.random.uniform([]) + tf.cast(i, tf.float32))
  def kinds(dataset):
    return [text.split(" (")[0]
            for text in saveable.inspect(dataset).unsaveable]

  assert kinds(plain) == ["shuffle"]
  assert kinds(to_file) == ["cache"]
  assert rewrite.kept == ["cache() to a file (its contents are not "
                          "recomputed)"]
  assert "from_generator" in kinds(generated)
  assert kinds(python) == ["py_function"]
  assert kinds(legacy_interleave) == ["experimental parallel_interleave"]
  assert saveable.inspect(augmented) == saveable.Findings(
      unsaveable=[], random_ops=["RandomUniform"])


def _times_two(x):
  return x * 2


def _unordered_options(dataset, **optimizations):
  """`dataset` with its options asking for no fixed order (and setting
  `optimizations`)."""
  options = tf.data.Options()
  options.experimental_deterministic = False
  for name, value in optimizations.items():
    setattr(options.experimental_optimization, name, value)
  return dataset.with_options(options)


_NUMBERS = tf.data.Dataset.range
_MAP = ("map with num_parallel_calls and deterministic=False "
        "(ParallelMapDatasetV2)")
_MAP_BY_OPTIONS = ("map with num_parallel_calls and the pipeline's "
                   "Options.deterministic=False (ParallelMapDatasetV2)")
_INTERLEAVE = ("interleave with num_parallel_calls and deterministic=False "
               "(ParallelInterleaveDatasetV4)")
# (pipeline, what `inspect` finds unordered: what TF 2.21 refuses to save).
_ORDER_CASES = {
    "parallel map": (
        lambda: _NUMBERS(99).map(_times_two, 4, deterministic=False),
        [_MAP]),
    "parallel map, ordered": (
        lambda: _NUMBERS(99).map(_times_two, 4, deterministic=True), []),
    "parallel map fused with its batch": (
        lambda: _NUMBERS(99).map(_times_two, 4, deterministic=False)
        .batch(4, drop_remainder=True), []),
    "map and batch fusion off": (
        lambda: _unordered_options(
            _NUMBERS(99).map(_times_two, 4).batch(4),
            map_and_batch_fusion=False), [_MAP_BY_OPTIONS]),
    "default optimizations off": (
        lambda: _unordered_options(
            _NUMBERS(99).map(_times_two, 4).batch(4),
            apply_default_optimizations=False), [_MAP_BY_OPTIONS]),
    "a map between the parallel map and the batch": (
        lambda: _NUMBERS(99).map(_times_two, 4, deterministic=False)
        .map(_times_two).batch(4), [_MAP]),
    "a parallel batch": (
        lambda: _NUMBERS(99).map(_times_two, 4, deterministic=False)
        .batch(4, num_parallel_calls=2), [_MAP]),
    "efficientnet's: options unordered, a parallel map after the batch": (
        lambda: _unordered_options(
            _NUMBERS(99).map(_times_two, 8).batch(4, drop_remainder=True)
            .map(_times_two, 8).prefetch(2)), [_MAP_BY_OPTIONS]),
    "options unordered, the maps ordered": (
        lambda: _unordered_options(
            _NUMBERS(99).map(_times_two, 4, deterministic=True)), []),
    "sequential maps, options unordered": (
        lambda: _unordered_options(_NUMBERS(99).map(_times_two)), []),
    "parallel interleave": (
        lambda: _NUMBERS(99).interleave(
            _NUMBERS, cycle_length=2, num_parallel_calls=2,
            deterministic=False), [_INTERLEAVE]),
    "sequential interleave, options unordered": (
        lambda: _unordered_options(_NUMBERS(99).interleave(
            _NUMBERS, cycle_length=2)), []),
    "in an interleave's function": (
        lambda: _NUMBERS(99).interleave(
            lambda i: _NUMBERS(i).map(_times_two, 2, deterministic=False),
            cycle_length=2), [_MAP]),
    "fused in a flat_map's function": (
        lambda: _NUMBERS(99).flat_map(
            lambda i: _NUMBERS(i).map(_times_two, 2, deterministic=False)
            .batch(2)), []),
}


@pytest.mark.parametrize("case", sorted(_ORDER_CASES))
def test_inspect_finds_the_unordered_transformations_tf_cannot_save(case):
  make, expected = _ORDER_CASES[case]
  dataset = make()
  assert saveable.inspect(dataset).unordered == expected
  # What TF does: the first save fails for those found.
  try:
    session_values(saveable.symbolic(dataset), 5)
    refused = None
  except tf.errors.UnimplementedError as error:
    refused = error.message
  if expected:
    op = expected[0].split("(")[-1][:-1]
    assert f"{op} does not support symbolic checkpointing" in refused
  else:
    assert refused is None


def test_with_op_determinism_a_parallel_map_keeps_its_order():
  tf_config = pytest.importorskip("tensorflow.python.framework.config")
  dataset = _NUMBERS(99).map(_times_two, 4, deterministic=False)
  tf_config.enable_op_determinism()
  try:
    assert saveable.inspect(dataset).unordered == []
    session_values(saveable.symbolic(dataset), 5)
  finally:
    tf_config.disable_op_determinism()
  assert saveable.inspect(dataset).unordered == [_MAP]


@pytest.mark.parametrize("deterministic", [True, None])
def test_an_ordered_parallel_interleave_is_not_kept(deterministic):
  """Its restored position stopped the infeed for good
  (tests/test_input_position.py): reported as a position cannot hold,
  where the rewrite did not replace it (built outside it)."""
  dataset = _NUMBERS(99).interleave(_NUMBERS, cycle_length=2,
                                    num_parallel_calls=2,
                                    deterministic=deterministic)
  assert saveable.inspect(dataset).unsaveable == [
      "interleave with num_parallel_calls (ParallelInterleaveDatasetV4)"]
