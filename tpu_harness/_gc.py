"""Keeping the garbage collector's full collections short.

Importing TensorFlow leaves about 300,000 objects that live as long as the
process (modules, op registries, their functions). CPython's collector
scans every one of them at each full (generation 2) collection, which
comes every few graph builds, since each `train()`, `evaluate()` or
`predict()` builds a graph of tens of thousands of objects: on the 2-core
development machine a full collection took 0.15 to 0.2 s, landing at
random in a call's start-up (measured in `scripts/bench/estimator.py`
runs: one `train()` in three paid it). `gc.freeze` moves the objects that
exist at import into a permanent generation that collections skip; later
objects (the graphs, their sessions) are collected as before.

What is frozen is never collected by the cycle collector: objects made
before `tpu_harness` is imported that become cyclic garbage later stay in
memory (`gc.unfreeze()` undoes it). Import `tpu_harness` early, as
`python -m tpu_harness` and `from tpu_harness import estimator` do.
"""

import gc


def freeze_imported() -> int:
  """Moves every object the collector tracks now into the permanent
  generation; returns how many objects are frozen."""
  gc.freeze()
  return gc.get_freeze_count()
