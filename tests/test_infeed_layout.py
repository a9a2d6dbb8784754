"""Tests for tpu_harness._infeed.layout."""

import pytest
import tensorflow as tf

from tpu_harness._infeed import layout


_SIZES = layout.InfeedLayout(min_chunk_steps=32, min_chunk_bytes=2**20)


@pytest.mark.parametrize("capacity,shape,expected", [
    (1, [4], 32),                 # Small: a floor of steps.
    (100, [4], 100),              # A loop is more than that.
    (1, [2**20 // 4], 1),         # Large: one loop.
    (1, [2**20 // 40], 10),       # As many as fit the bytes.
])
def test_chunk_steps(capacity, shape, expected):
  assert _SIZES.chunk_steps(
      capacity, [tf.TensorSpec(shape, tf.float32)]) == expected


@pytest.mark.parametrize("shape,large", [([16], False), ([16 * 1024], True)])
def test_large_elements_go_one_by_one(shape, large):
  assert layout.InfeedLayout(per_element_bytes=64 * 1024).one_by_one(
      [tf.TensorSpec(shape, tf.float32)]) == large


@pytest.mark.parametrize("structure,expected", [
    (1, ["e"]),
    ((1, 2), ["e[0]", "e[1]"]),
    ({"b": 1, "a": (2, 3)}, ["e['a'][0]", "e['a'][1]", "e['b']"]),
])
def test_leaf_paths_follow_flatten_order(structure, expected):
  assert layout.leaf_paths(structure, "e") == expected
  assert len(tf.nest.flatten(structure)) == len(expected)


def test_the_infeed_turns_tf_data_autotuning_off_unless_the_input_sets_it():
  dataset = tf.data.Dataset.range(4)
  assert dataset.options().autotune.enabled is None  # TF's default: on.
  assert layout.without_autotune_thread(
      dataset).options().autotune.enabled is False
  for choice in (True, False):
    options = tf.data.Options()
    options.autotune.enabled = choice
    chosen = dataset.with_options(options)
    assert layout.without_autotune_thread(
        chosen).options().autotune.enabled is choice
