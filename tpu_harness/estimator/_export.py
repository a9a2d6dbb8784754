"""Writing a SavedModel of `model_fn`'s PREDICT graph from a checkpoint.

As TF's Estimator did: the serving inputs from `serving_input_receiver_fn`,
`model_fn` called on their features in PREDICT mode (outside any device
loop), the signatures from its `export_outputs` (or its predictions), the
variables restored from the checkpoint (through its Scaffold's saver when it
gives one, e.g. moving averages restored in place of the weights) and saved
under their own names, in `<export_dir_base>/<unix seconds>`, written to a
`temp-<seconds>` directory first and renamed when complete.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Optional

from absl import logging
import tensorflow as tf

from hooks import paths
from tpu_harness import spec as spec_lib
from tpu_harness._run import restore
from tpu_harness.estimator import export as export_lib


def export_saved_model(*, export_dir_base: str,
                       serving_input_receiver_fn: Callable[[], object],
                       model_fn: Callable[[Mapping[str, tf.Tensor]], object],
                       checkpoint: str,
                       assets_extra: Optional[Mapping[str, str]] = None,
                       as_text: bool = False) -> bytes:
  """Writes the SavedModel; returns its directory (bytes, as TF did).

  Args:
    export_dir_base: the directory that gets a timestamped subdirectory.
    serving_input_receiver_fn: returns an `export.ServingInputReceiver`.
    model_fn: features -> the PREDICT ModelSpec.
    checkpoint: the checkpoint to export.
    assets_extra: {destination under assets.extra: source file}.
    as_text: write saved_model.pbtxt instead of saved_model.pb.

  Raises:
    TypeError: `serving_input_receiver_fn` returned something else.
    ValueError: no signature fits the serving inputs.
  """
  with tf.Graph().as_default():
    spec_lib.create_global_step()
    receiver = serving_input_receiver_fn()
    if not isinstance(receiver, export_lib.ServingInputReceiver):
      raise TypeError(
          f"`serving_input_receiver_fn` must return a "
          f"tpu_harness.estimator.export.ServingInputReceiver, got "
          f"{receiver!r}.")
    spec = model_fn(receiver.features)
    signatures = export_lib.signature_defs(
        spec.export_outputs, spec.predictions, receiver.receiver_tensors)
    scaffold, _ = restore.scaffold_for(spec, tf.compat.v1.train.Saver)
    export_dir, temp_dir = _new_export_dir(export_dir_base)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.local_variables_initializer())
      scaffold.saver.restore(session, checkpoint)
      builder = tf.compat.v1.saved_model.Builder(temp_dir)
      builder.add_meta_graph_and_variables(
          session, [tf.saved_model.SERVING], signature_def_map=signatures,
          main_op=tf.compat.v1.tables_initializer(),
          strip_default_attrs=True)
      builder.save(as_text=as_text)
  for destination, source in (assets_extra or {}).items():
    target = paths.join(paths.join(temp_dir, "assets.extra"), destination)
    tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
    tf.io.gfile.copy(source, target, overwrite=True)
  tf.io.gfile.rename(temp_dir, export_dir)
  logging.info("SavedModel of %s written to %s.", checkpoint, export_dir)
  return export_dir.encode()


def _new_export_dir(base: str):
  """(`base/<seconds>`, `base/temp-<seconds>`), not yet existing."""
  seconds = int(time.time())
  while True:
    final = paths.join(base, str(seconds))
    temp = paths.join(base, f"temp-{seconds}")
    if not tf.io.gfile.exists(final) and not tf.io.gfile.exists(temp):
      tf.io.gfile.makedirs(base)
      return final, temp
    seconds += 1
