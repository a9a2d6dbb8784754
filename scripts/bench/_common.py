"""What every benchmark shares; import it before TensorFlow.

A quiet TensorFlow (its C++ log at warnings; set before TF is imported),
absl logging at WARNING, and the markdown tables the benchmarks print
(README and docs/benchmarks.md take them as they are), and a checkpoint's
size.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top


def quiet() -> None:
  """absl logging at WARNING; no deprecation notes from tf.compat.v1 layers
  (one per call), which would bury the results."""
  logging.set_verbosity(logging.WARNING)
  warnings.simplefilter("ignore", UserWarning)


def checkpoint_bytes(prefix: str) -> int:
  """The size of checkpoint `prefix`'s data and index files (not its
  `.meta`), local or on gs://."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return sum(tf.io.gfile.stat(path).length
             for path in tf.io.gfile.glob(prefix + ".*")
             if not path.endswith(".meta"))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]],
                numeric: Sequence[bool] = ()) -> None:
  """Prints a markdown table: `columns` the titles, each row's cells as
  strings; columns marked `numeric` (by position) align right."""
  numeric = list(numeric) + [False] * (len(columns) - len(numeric))
  print("| " + " | ".join(columns) + " |")
  print("| " + " | ".join("---:" if right else "---"
                          for right in numeric) + " |")
  for row in rows:
    print("| " + " | ".join(str(cell) for cell in row) + " |")
