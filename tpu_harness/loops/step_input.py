"""What each step's infeed element holds: the input laid out per replica.

Both device loops (`cpu_loop.CpuEmulationLoop`, `tpu_loop.TpuLoop`) read one
element per step. With several replicas (and always on a TPU, whose host
enqueues each core's part separately) the element holds every replica's
batch stacked on a first axis of length `num_shards`:

* PER_HOST_V2 (the default): `input_fn` gets the per-replica batch size and
  each replica takes its own consecutive batch;
* PER_HOST_V1 (`per_host_input`; TPUEstimator's evaluation and
  prediction input except under PER_HOST_V2): `input_fn` gets the global
  batch size and each batch is split among the replicas along its first
  axis;
* prediction: each batch padded to its full size and paired with its count
  of real rows, so that the last, partial batch runs with the static shapes
  the loop was built for and its padding can be dropped on the host;
* evaluation off TPU cores (one replica, `padded_batches`): batches of no
  fixed size (a partial last one) padded to the batch size and paired
  with their count of real rows, which the step cuts them back to, so
  that `model_fn` gets each batch's real rows as TF's Estimator gave them.

An element is what `input_fn`'s Dataset yields, as TPUEstimator read it: a
tuple of two is (features, labels); anything else (a tensor, a dict) is
features alone, for which `model_fn` gets `labels=None`, in every mode
(`features_and_labels`). Tuples of another length are refused, as
TPUEstimator and Estimator refused them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness import _tf_internals
from tpu_harness import spec as spec_lib
from tpu_harness._infeed.layout import leaf_paths
from tpu_harness._infeed.host_position import HostPosition
from tpu_harness.errors import InputShapeError


def make_input(input_fn: Callable, params: Dict[str, Any], mode: str,
               check_shapes: bool = True,
               position: Optional[HostPosition] = None,
               dynamic_batch: bool = False) -> tf.data.Dataset:
  """Calls `input_fn` and checks its Dataset against the contract.

  The Dataset's elements are `(features, labels)` (a tuple of two) or
  features alone (a tensor or a dict of them; `model_fn` then gets
  `labels=None`), in every mode, as TPUEstimator took them (see
  `features_and_labels`). `input_fn` may return tensors instead, as
  TPUEstimator and Estimator allowed, in the same two forms. Read from a
  tf.compat.v1 iterator (`make_one_shot_iterator().get_next()`), they stand
  for the dataset behind it; otherwise (e.g. random fake data) `input_fn`
  is called again inside a Dataset that repeats it, so that its ops run
  once per batch, as TPUEstimator ran them each step.

  Args:
    input_fn: `input_fn(params)`.
    params: its params.
    mode: a ModeKeys value.
    check_shapes: require fixed batch shapes (in TRAIN and EVAL only).
    position: the training input's position: `input_fn` runs within its
      `rewriting()`.
    dynamic_batch: with `check_shapes`, the first (batch) dimension need
      not be fixed, only the others (see `padded_batches`).

  Returns:
    The Dataset.

  Raises:
    TypeError: neither a Dataset nor tensors; elements that are a tuple of
      other than two, or hold something other than dense tensors.
    InputShapeError: with `check_shapes`, batches of no fixed shape (with
      `dynamic_batch`: of no fixed shape after the first dimension).
  """
  with position.rewriting() if position is not None else (
      contextlib.nullcontext()):
    with _tf_internals.iterators_made() as made:
      returned = input_fn(params)
  dataset = _as_dataset(returned, made, lambda: input_fn(params))
  spec = dataset.element_spec
  if (isinstance(spec, tuple) and len(spec) == 2
      and _tf_internals.is_none_spec(spec[1])):
    # (features, None): features alone, as TPUEstimator read it.
    dataset = dataset.map(lambda features, labels: features)
    spec = dataset.element_spec
  if isinstance(spec, tuple) and len(spec) != 2:
    raise TypeError(
        f"`input_fn` must return (features, labels) as a tuple of two, or "
        f"features alone (a tensor or a dict of them), as TPUEstimator "
        f"took; its elements are a tuple of {len(spec)}: {spec}.")
  for name, leaf in zip(element_names(spec), tf.nest.flatten(spec)):
    if not isinstance(leaf, tf.TensorSpec):
      raise TypeError(f"`input_fn` must return a Dataset of dense tensors; "
                      f"{name} is a {type(leaf).__name__}.")
  if check_shapes and mode != spec_lib.ModeKeys.PREDICT:
    for name, leaf in zip(element_names(spec), tf.nest.flatten(spec)):
      if dynamic_batch and leaf.shape.rank is not None and (
          leaf.shape[1:].is_fully_defined()):
        continue
      if not leaf.shape.is_fully_defined():
        raise InputShapeError(
            f"`input_fn` must return batches of fixed shape in mode "
            f"{mode!r} (batch with drop_remainder=True); {name} has shape "
            f"{leaf.shape}." if not dynamic_batch else
            f"`input_fn` must return batches whose dimensions after the "
            f"first are fixed in mode {mode!r}; {name} has shape "
            f"{leaf.shape}.")
  return dataset


def _as_dataset(returned: Any, made, call_again: Callable[[], Any]
                ) -> tf.data.Dataset:
  """The Dataset `input_fn` returned, or the one its tensors stand for
  (see `make_input`)."""
  if isinstance(returned, tf.data.Dataset):
    return returned
  if isinstance(returned, (list, tuple)) and len(returned) == 2 and (
      returned[1] is None):
    # (features, None): features alone, as TPUEstimator read it (a Dataset
    # made by `call_again` yields the None too; `make_input` drops it).
    returned = returned[0]
  flat = tf.nest.flatten(returned)
  if not flat or not all(isinstance(t, tf.Tensor) for t in flat):
    raise TypeError(
        f"`input_fn` must return a tf.data.Dataset, or tensors: (features, "
        f"labels) or features (a tensor or a dict of them); got "
        f"{type(returned).__name__} ({returned!r}).")
  lifted = _lifted(returned, flat, made)
  if lifted is not None:
    return lifted
  logging.info("`input_fn` returned tensors that are not read from a "
               "tf.data iterator: it is called again inside a Dataset that "
               "repeats it, so that its ops run once per batch.")
  return tf.data.Dataset.from_tensors(0).repeat().map(
      lambda _: call_again())


# Ops a computation on an iterator's output cannot be moved into a
# Dataset.map with: state of the session's graph (variables, feeds,
# queues, other iterators).
_NOT_LIFTED = ("Placeholder", "PlaceholderWithDefault", "VarHandleOp",
               "VariableV2", "Variable", "ReadVariableOp", "Iterator",
               "IteratorV2", "AnonymousIteratorV3", "MakeIterator",
               "OneShotIterator", "QueueDequeueV2", "QueueDequeueManyV2")


def _lifted(returned: Any, flat: list, made) -> Optional[tf.data.Dataset]:
  """The Dataset that tensors read from one tf.compat.v1 iterator, or
  computed from its output, stand for (e.g. `images, labels =
  iterator.get_next(); return tf.reshape(images, shape), labels`): the
  iterator's dataset, mapped with a copy of the ops between its output and
  the tensors, if any, which TPUEstimator ran once per step. None if they
  read anything else of the session's graph (a variable, a feed, another
  iterator)."""
  datasets = {resource.name: dataset for resource, dataset in made}
  source, ops, pending = None, {}, [t.op for t in flat]
  while pending:
    op = pending.pop()
    if op.name in ops or op is source:
      continue
    if op.type == "IteratorGetNext" and op.inputs[0].name in datasets:
      if source is not None:
        return None  # Two iterators, or two reads of one.
      source = op
      continue
    if op.type in _NOT_LIFTED:
      return None
    ops[op.name] = op
    pending.extend(t.op for t in op.inputs)
    pending.extend(op.control_inputs)
  if source is None:
    return None
  dataset = datasets[source.inputs[0].name]
  if not ops:  # The read's own outputs.
    return dataset.map(lambda *element: tf.nest.pack_sequence_as(
        returned, [tf.nest.flatten(element)[t.value_index] for t in flat]))
  graph_def = source.graph.as_graph_def()
  part = type(graph_def)()
  part.versions.CopyFrom(graph_def.versions)
  part.library.CopyFrom(graph_def.library)
  for node in graph_def.node:
    if node.name in ops:
      copied = part.node.add()
      copied.CopyFrom(node)
      copied.device = ""
      if "_class" in copied.attr:  # Colocation with ops left behind.
        del copied.attr["_class"]
      if any(name.lstrip("^").split(":")[0] == source.name
             for name in copied.input if name.startswith("^")):
        return None  # A control dependency on the read itself.
  # The read's outputs the copied ops take (import_graph_def refuses
  # mapping others).
  used = sorted({t.value_index for op in ops.values() for t in op.inputs
                 if t.op is source})
  logging.info("`input_fn` returned tensors computed from a tf.data "
               "iterator's output: the same ops run on each element of the "
               "iterator's dataset (%d ops).", len(ops))

  computed = [t.name for t in flat if t.op is not source]

  def compute(*element):
    values = tf.nest.flatten(element)
    outputs = iter(tf.graph_util.import_graph_def(
        part, input_map={f"{source.name}:{index}": values[index]
                         for index in used},
        return_elements=computed, name="input_fn"))
    return tf.nest.pack_sequence_as(returned, [
        values[t.value_index] if t.op is source else next(outputs)
        for t in flat])

  return dataset.map(compute)


def features_and_labels(element: Any) -> Tuple[Any, Any]:
  """An input element as `model_fn`'s (features, labels): a tuple of two is
  the pair; anything else is features alone, with labels None (as
  TPUEstimator's `_Inputs` parsed `input_fn`'s output)."""
  if isinstance(element, tuple) and len(element) == 2:
    return element[0], element[1]
  return element, None


def element_names(spec: Any) -> list:
  """Names of an input element's leaves: features..., labels..."""
  features, labels = features_and_labels(spec)
  names = leaf_paths(features, "features")
  if labels is not None:
    names += leaf_paths(labels, "labels")
  return names


def per_step(dataset: tf.data.Dataset, num_shards: int, per_host: bool,
             stack_one: bool = False) -> tf.data.Dataset:
  """One element per step: the replicas' batches stacked on a first axis
  (with one replica, only if `stack_one`).

  Args:
    dataset: `input_fn`'s batches.
    num_shards: replicas.
    per_host: each batch is the global one, split among the replicas
      (else: each batch is one replica's).
    stack_one: stack a single replica's batch too ([1, batch, ...]).
  """
  if num_shards == 1 and not stack_one:
    return dataset
  if per_host:
    return dataset.map(_splitter(num_shards, dataset.element_spec))
  return dataset.batch(num_shards, drop_remainder=True)


def _splitter(num_shards: int, spec: Any) -> Callable:
  """A map function: one global batch -> [num_shards, batch / num_shards,
  ...] per tensor. InputShapeError if the batch does not split evenly."""
  for name, leaf in zip(element_names(spec), tf.nest.flatten(spec)):
    rows = leaf.shape[0] if leaf.shape.rank else None
    if rows is None or rows % num_shards:
      raise InputShapeError(
          f"A batch of {rows} rows ({name}) cannot be split among "
          f"{num_shards} replicas; the batch size must be a fixed multiple "
          f"of the number of replicas.")

  def split(tensor):
    return tf.reshape(tensor, [num_shards, tensor.shape[0] // num_shards]
                      + tensor.shape[1:].as_list())

  def split_element(*element):
    result = tf.nest.map_structure(split, element)
    return result if len(element) > 1 else result[0]

  return split_element


def _pad_to(tensor: tf.Tensor, rows: int) -> tf.Tensor:
  """`tensor` with zero rows appended up to `rows` along its first axis."""
  return tf.pad(tensor, [[0, rows - tf.shape(tensor)[0]]]
                + [[0, 0]] * (tensor.shape.rank - 1))


def has_dynamic_batch(spec: Any) -> bool:
  """Whether some tensor of an input element has no fixed first dimension
  (a batch of no fixed size)."""
  return any(not leaf.shape.is_fully_defined()
             for leaf in tf.nest.flatten(spec))


def padded_batches(dataset: tf.data.Dataset, batch_size: int
                   ) -> Tuple[tf.data.Dataset, Callable[[Any], Any]]:
  """Batches of up to `batch_size` rows, of no fixed size, padded to
  `batch_size` and paired with their count of real rows, so that the
  infeed holds them as it holds fixed batches. Tensors of fixed shape are
  left as they are; the others must agree on their rows.

  Args:
    dataset: `make_input(..., dynamic_batch=True)`'s Dataset.
    batch_size: the most rows of a batch.

  Returns:
    (the Dataset of (element, rows), every tensor of fixed shape; a
    function of such an element on the device that cuts each padded tensor
    back to its real rows, its first dimension then unknown, as the
    input's was).
  """
  dynamic = [not leaf.shape.is_fully_defined()
             for leaf in tf.nest.flatten(dataset.element_spec)]

  def pad(*element):
    element = element if len(element) > 1 else element[0]
    flat = tf.nest.flatten(element)
    counts = [tf.shape(t)[0] for t, d in zip(flat, dynamic) if d]
    rows = counts[0]
    checks = [tf.debugging.assert_less_equal(
        rows, batch_size, message=f"an input batch has more rows than the "
        f"batch size ({batch_size})")]
    checks += [tf.debugging.assert_equal(
        count, rows, message="an input batch's tensors have different "
        "numbers of rows") for count in counts[1:]]
    with tf.control_dependencies(checks):
      padded = [tf.ensure_shape(_pad_to(t, batch_size),
                                [batch_size] + t.shape[1:].as_list())
                if d else t for t, d in zip(flat, dynamic)]
    return tf.nest.pack_sequence_as(element, padded), rows

  def cut(padded_element):
    element, rows = padded_element
    flat = [t[:rows] if d else t
            for t, d in zip(tf.nest.flatten(element), dynamic)]
    return tf.nest.pack_sequence_as(element, flat)

  return dataset.map(pad), cut


def padded_predict_input(dataset: tf.data.Dataset, batch_size: int,
                         num_shards: int,
                         per_host: bool = False) -> tf.data.Dataset:
  """Pads every batch to `batch_size` rows and every step to `num_shards`
  batches, pairing each batch with its count of real rows: elements are
  (features [num_shards, batch_size, ...], rows [num_shards]). With
  `per_host`, each input batch (up to `batch_size * num_shards` rows) is
  padded and then split among the replicas."""
  if features_and_labels(dataset.element_spec)[1] is not None:
    dataset = dataset.map(lambda features, labels: features)
  for path, spec in zip(leaf_paths(dataset.element_spec, "features"),
                        tf.nest.flatten(dataset.element_spec)):
    if spec.shape.rank is None or not spec.shape[1:].is_fully_defined():
      raise InputShapeError(
          f"`input_fn` for predict must return batches whose dimensions "
          f"after the first are fixed; {path} has shape "
          f"{spec.shape}.")

  def pad_rows(features):
    rows = tf.shape(tf.nest.flatten(features)[0])[0]
    check = tf.debugging.assert_less_equal(
        rows, batch_size, message=f"predict batch larger than batch_size "
        f"({batch_size})")
    with tf.control_dependencies([check]):
      padded = tf.nest.map_structure(
          lambda t: tf.ensure_shape(_pad_to(t, batch_size),
                                    [batch_size] + t.shape[1:].as_list()),
          features)
    return padded, rows

  def pad_shards(features, rows):
    features = tf.nest.map_structure(
        lambda t: tf.ensure_shape(_pad_to(t, num_shards),
                                  [num_shards] + t.shape[1:].as_list()),
        features)
    rows = tf.ensure_shape(_pad_to(rows, num_shards), [num_shards])
    return features, rows

  if per_host and num_shards > 1:
    host_rows = batch_size * num_shards

    def pad_and_split(features):
      rows = tf.shape(tf.nest.flatten(features)[0])[0]
      check = tf.debugging.assert_less_equal(
          rows, host_rows, message=f"predict batch larger than the global "
          f"batch size ({host_rows})")
      with tf.control_dependencies([check]):
        split = tf.nest.map_structure(
            lambda t: tf.reshape(
                _pad_to(t, host_rows),
                [num_shards, batch_size] + t.shape[1:].as_list()), features)
      starts = tf.range(num_shards) * batch_size
      return split, tf.clip_by_value(rows - starts, 0, batch_size)

    return dataset.map(pad_and_split)
  return dataset.map(pad_rows).batch(num_shards).map(pad_shards)
