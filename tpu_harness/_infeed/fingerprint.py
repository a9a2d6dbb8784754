"""What a training input pipeline is, to tell whether a saved position
fits the pipeline a resumed run builds.

A position saved by tf.data restores into any pipeline whose iterator
accepts it: into replaced data (training on the old examples still in the
restored shuffle buffer), into re-exported files whose records have other
sizes (every read then fails with "corrupted record"), or into elements of
another shape. So a fingerprint is saved with the position: a digest of
the dataset's ops (their types and attributes, element shapes and types
included, and the values they take: data held in the graph, file names,
ranges, buffer and batch sizes; names, which differ from run to run, left
out), of the structure of the functions they run (`map`, `filter`: their
ops, not the constants in them, which say how an element is transformed,
not which elements come in which order), and the sizes of the files the
pipeline names. On resume a position whose fingerprint differs is not
restored: the run falls back to reading and dropping the steps already
trained on (an endless input: to a new pass), saying what differs.

`of` reads a built dataset; `Fingerprint` compares two (pure).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
from typing import Dict, Iterator, List, Optional

from absl import logging
import tensorflow as tf

from tpu_harness import _tf_internals

# The most files a fingerprint stats (at start-up, in parallel).
MAX_FILES = 4096
# Attributes whose values differ from run to run for the same pipeline:
# function names carry a counter, dataset metadata the op's unique name.
_RUN_SPECIFIC_ATTRS = ("metadata", "_class")
_GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """A pipeline as a position's fingerprint holds it.

  Attributes:
    graph: digest of the dataset's ops and in-graph data.
    files: {path: size in bytes} of the files its string constants name
      (patterns expanded), at most MAX_FILES.
  """
  graph: str
  files: Dict[str, int]

  def to_json(self) -> str:
    return json.dumps({"graph": self.graph, "files": self.files},
                      sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> Optional["Fingerprint"]:
    """The fingerprint saved as `text`; None for none or an unreadable
    one."""
    try:
      value = json.loads(text)
      return cls(graph=str(value["graph"]),
                 files={str(k): int(v) for k, v in value["files"].items()})
    except (ValueError, KeyError, TypeError, AttributeError):
      return None

  def differences(self, saved: "Fingerprint") -> List[str]:
    """What differs from `saved` (the saving run's pipeline), in words;
    empty when nothing does."""
    found = []
    if self.graph != saved.graph:
      found.append("its transformations, or the data it holds in the "
                   "graph, changed")
    for path in sorted(set(self.files) | set(saved.files)):
      then, now = saved.files.get(path), self.files.get(path)
      if then == now:
        continue
      if then is None:
        found.append(f"it reads {path}, which it did not")
      elif now is None:
        found.append(f"it no longer reads {path}")
      else:
        found.append(f"{path} has {now} bytes, {then} then")
    return found


def of(dataset: tf.data.Dataset) -> Fingerprint:
  """The fingerprint of `dataset` (built in the default graph)."""
  digest = hashlib.sha256()
  strings = []
  ops, bodies = _tf_internals.dataset_nodes(dataset)
  for node in ops:
    node = _without_run_specifics(node)
    digest.update(node.SerializeToString(deterministic=True))
    strings.extend(_string_constants(node))
  for node in bodies:
    node = _without_run_specifics(node)
    if node.op == "Const" and "value" in node.attr:
      strings.extend(_string_constants(node))
      del node.attr["value"]
    digest.update(node.SerializeToString(deterministic=True))
  return Fingerprint(graph=digest.hexdigest()[:32], files=_sizes(strings))


def _without_run_specifics(node: tf.compat.v1.NodeDef
                           ) -> tf.compat.v1.NodeDef:
  copy = tf.compat.v1.NodeDef()
  copy.CopyFrom(node)
  copy.name = ""
  del copy.input[:]
  copy.device = ""
  for key in _RUN_SPECIFIC_ATTRS:
    if key in copy.attr:
      del copy.attr[key]
  for value in copy.attr.values():
    if value.HasField("func"):
      value.func.name = ""
    elif value.HasField("list"):
      for func in value.list.func:
        func.name = ""
  return copy


def _string_constants(node: tf.compat.v1.NodeDef) -> Iterator[str]:
  if node.op != "Const" or "value" not in node.attr:
    return
  tensor = node.attr["value"].tensor
  if tensor.dtype != tf.string.as_datatype_enum:
    return
  for value in tensor.string_val:
    try:
      text = value.decode("utf-8")
    except UnicodeDecodeError:
      continue
    if 0 < len(text) < 4096 and "\n" not in text and (
        "/" in text or "." in text):
      yield text


def _sizes(strings: List[str]) -> Dict[str, int]:
  """{path: size} of the strings that name files (patterns expanded)."""
  try:
    paths: List[str] = []
    for text in dict.fromkeys(strings):
      if any(c in text for c in _GLOB_CHARACTERS):
        paths.extend(tf.io.gfile.glob(text))
      else:
        paths.append(text)
      if len(paths) > MAX_FILES:
        logging.info("The training input names more than %d files; its "
                     "fingerprint covers the first %d.", MAX_FILES, MAX_FILES)
        paths = paths[:MAX_FILES]
        break
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      sizes = list(pool.map(_size_or_none, paths))
    return {path: size for path, size in zip(paths, sizes)
            if size is not None}
  except tf.errors.OpError as error:
    logging.info("The training input's files are left out of its "
                 "fingerprint (%s).", str(error).splitlines()[0])
    return {}


def _size_or_none(path: str) -> Optional[int]:
  try:
    stat = tf.io.gfile.stat(path)
  except tf.errors.OpError:
    return None
  return None if stat.is_directory else int(stat.length)
