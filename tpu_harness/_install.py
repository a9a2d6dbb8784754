"""`install()`: TensorFlow's estimator names resolve to `tpu_harness.estimator`.

TensorFlow 2.21 has no `tf.compat.v1.estimator` (nor `tf.estimator`), and
the `tensorflow-estimator` package does not import with it. After
`install()`, in this process:

- `tf.compat.v1.estimator` is `tpu_harness.estimator`, on every module
  object that stands for `tensorflow.compat.v1` (`tf.compat.v1`,
  `tf.compat.v2.compat.v1`, `tf.compat.v1.compat.v1`), so
  `import tensorflow.compat.v1 as tf; tf.estimator.tpu.TPUEstimator(...)`
  works, whether that import came before or after `install()`;
- `tf.estimator` (on `tensorflow` and on each `tensorflow.compat.v2`) is
  `tpu_harness.estimator` too, where TensorFlow has none of its own (as in
  2.21): programs written for TF 2 use `tf.estimator.ModeKeys` and the like;
- `sys.modules` holds `tensorflow.compat.v1.estimator`,
  `tensorflow.estimator` and `tensorflow.compat.v2.estimator` with their
  `.tpu` and `.export`, for `import ... as` and `from ... import` forms;
- a `tensorflow_estimator` package of our own (`ALIAS_MODULES`) stands in
  for the real one: `tensorflow_estimator.estimator` is
  `tpu_harness.estimator`, and the implementation modules that programs
  import names from (`tensorflow_estimator.python.estimator.model_fn`,
  `.tpu.tpu_estimator`, ...) hold our classes under TF's names. A name we do
  not provide is an AttributeError (an ImportError for `from ... import`)
  that says so.

Only public behaviour of TensorFlow's modules is used: they take attributes
with `setattr` (`tf.compat.v1` is a lazy-loading wrapper whose `__setattr__`
also sets the attribute on the module it wraps), and the import system
finds registered `sys.modules` entries before looking anywhere else.

TF 1's private `tensorflow.python.estimator.estimator` holds `Estimator`
and `_load_global_step_from_checkpoint_dir`, the one private function TPU
programs (efficientnet's `main.py`) import from it.

Not covered: `tf.contrib` (TF 1's `tf.contrib.tpu.TPUEstimator`), the
rest of the private `tensorflow.python.estimator` path,
`tensorflow_estimator.compat`, and the estimator modules we do not
implement (canned estimators, heads, `early_stopping`, `keras_lib`, ...):
importing those stays an error.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Dict, Iterable, Tuple

from absl import logging

_ESTIMATOR = "tpu_harness.estimator"

# The alias package: module name -> (our module it takes names from, the
# names it holds). An empty tuple of names: the module is our module itself.
ALIAS_MODULES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "tensorflow_estimator": ("", ()),
    "tensorflow_estimator.estimator": (_ESTIMATOR, ()),
    "tensorflow_estimator.estimator.tpu": (_ESTIMATOR + ".tpu", ()),
    "tensorflow_estimator.estimator.export": (_ESTIMATOR + ".export", ()),
    "tensorflow_estimator.python": ("", ()),
    "tensorflow_estimator.python.estimator": ("", ()),
    "tensorflow_estimator.python.estimator.estimator": (
        _ESTIMATOR, ("Estimator",)),
    "tensorflow_estimator.python.estimator.model_fn": (
        _ESTIMATOR, ("EstimatorSpec", "ModeKeys")),
    "tensorflow_estimator.python.estimator.mode_keys": (
        _ESTIMATOR, ("ModeKeys",)),
    "tensorflow_estimator.python.estimator.run_config": (
        _ESTIMATOR, ("RunConfig",)),
    "tensorflow_estimator.python.estimator.training": (
        _ESTIMATOR, ("EvalSpec", "TrainSpec", "train_and_evaluate")),
    "tensorflow_estimator.python.estimator.export": ("", ()),
    "tensorflow_estimator.python.estimator.export.export": (
        _ESTIMATOR + ".export",
        ("ServingInputReceiver", "TensorServingInputReceiver")),
    "tensorflow_estimator.python.estimator.export.export_output": (
        _ESTIMATOR + ".export",
        ("ClassificationOutput", "ExportOutput", "PredictOutput",
         "RegressionOutput")),
    "tensorflow_estimator.python.estimator.export.export_lib": (
        _ESTIMATOR + ".export",
        ("ClassificationOutput", "ExportOutput", "PredictOutput",
         "RegressionOutput", "ServingInputReceiver",
         "TensorServingInputReceiver")),
    "tensorflow_estimator.python.estimator.tpu": ("", ()),
    "tensorflow_estimator.python.estimator.tpu.tpu_estimator": (
        _ESTIMATOR + ".tpu",
        ("ExportSavedModelApiVersion", "TPUEstimator", "TPUEstimatorSpec")),
    "tensorflow_estimator.python.estimator.tpu.tpu_config": (
        _ESTIMATOR + ".tpu", ("InputPipelineConfig", "RunConfig",
                              "TPUConfig")),
    # TF 1's path of the estimator package, private, which Google's TPU
    # programs (efficientnet, dcgan, deeplab) import for one private
    # function: `estimator._load_global_step_from_checkpoint_dir`.
    "tensorflow.python.estimator": ("", ()),
    "tensorflow.python.estimator.estimator": (
        _ESTIMATOR + "._estimator",
        ("Estimator", "_load_global_step_from_checkpoint_dir")),
}

_installed = False


def install() -> None:
  """Makes TensorFlow's estimator names resolve to `tpu_harness.estimator`.

  For this process: `tf.compat.v1.estimator` (and `tf.estimator` where
  TensorFlow has none), `import tensorflow.compat.v1.estimator`, `from
  tensorflow.compat.v1 import estimator`, `import tensorflow_estimator` and
  the `tensorflow_estimator.python.estimator` modules listed in
  MIGRATING.md all give `tpu_harness.estimator` or its classes, so a
  TPUEstimator program runs unedited. `python -m tpu_harness PROGRAM.py`
  calls it before running the program; call it yourself in a notebook or
  a launcher, before or after importing TensorFlow.

  Calling it again changes nothing. It does not undo: the names stay for
  the life of the process.

  Raises:
    ImportError: TensorFlow or `tpu_harness.estimator` does not import.
  """
  global _installed
  estimator = importlib.import_module(_ESTIMATOR)
  tf = importlib.import_module("tensorflow")
  v1 = importlib.import_module("tensorflow.compat.v1")
  v2 = importlib.import_module("tensorflow.compat.v2")

  _set_estimator(_unique([v1, tf.compat.v1, tf.compat.v2.compat.v1,
                          tf.compat.v1.compat.v1]), estimator, always=True)
  on_v2 = _set_estimator(_unique([tf, v2, tf.compat.v2,
                                  tf.compat.v1.compat.v2,
                                  tf.compat.v2.compat.v2]),
                         estimator, always=False)
  prefixes = ["tensorflow.compat.v1"]
  if tf in on_v2:
    prefixes.append("tensorflow")
  if v2 in on_v2:
    prefixes.append("tensorflow.compat.v2")
  for prefix in prefixes:
    name = prefix + ".estimator"
    sys.modules[name] = estimator
    sys.modules[name + ".tpu"] = estimator.tpu
    sys.modules[name + ".export"] = estimator.export
  _install_alias_package()
  if not _installed:
    _installed = True
    logging.info("tpu_harness.install(): tf.compat.v1.estimator%s and "
                 "tensorflow_estimator are tpu_harness.estimator in this "
                 "process.", ", tf.estimator" if tf in on_v2 else "")


def _unique(modules: Iterable[types.ModuleType]) -> list:
  """`modules` without repeats (by identity), in order."""
  seen, unique = set(), []
  for module in modules:
    if id(module) not in seen:
      seen.add(id(module))
      unique.append(module)
  return unique


def _set_estimator(modules: Iterable[types.ModuleType],
                   estimator: types.ModuleType, always: bool) -> list:
  """Sets `estimator` as the `estimator` attribute of each module (unless
  `always` is False and the module has one of its own); returns those that
  have ours now."""
  done = []
  for module in modules:
    current = module.__dict__.get("estimator")
    if current is None:
      try:
        current = getattr(module, "estimator", None)
      except Exception:  # pylint: disable=broad-except
        current = None  # A lazy loader failing to load its own: it has none.
    if current is not None and current is not estimator:
      if not always:
        logging.info("tpu_harness.install(): %s has its own `estimator` "
                     "(%r); left as it is.", module.__name__, current)
        continue
      logging.warning("tpu_harness.install(): %s.estimator (%r) replaced by "
                      "tpu_harness.estimator.", module.__name__, current)
    if current is not estimator:
      setattr(module, "estimator", estimator)
    done.append(module)
  return done


class _AliasModule(types.ModuleType):
  """A module of the `tensorflow_estimator` stand-in: a name it lacks is an
  AttributeError that says which module maps these names."""

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    raise AttributeError(
        f"module {self.__name__!r} (tpu_harness.install()'s stand-in for "
        f"the tensorflow-estimator package) has no attribute {name!r}; "
        f"MIGRATING.md lists what tpu_harness.estimator provides.")


def _install_alias_package() -> None:
  """Registers `ALIAS_MODULES` in `sys.modules`, each a child attribute of
  its parent."""
  modules = {}
  for name, (source, names) in ALIAS_MODULES.items():
    existing = sys.modules.get(name)
    if isinstance(existing, _AliasModule):
      module = existing  # An earlier install()'s, which programs may hold.
    elif source and not names:
      module = importlib.import_module(source)
    else:
      module = _AliasModule(name, f"tpu_harness.install()'s stand-in for "
                            f"{name}: {', '.join(names) or 'a package'}.")
      module.__spec__ = importlib.machinery.ModuleSpec(
          name, None, is_package=not names)
      if names:
        source_module = importlib.import_module(source)
        for attr in names:
          setattr(module, attr, getattr(source_module, attr))
        module.__all__ = list(names)
      else:
        module.__path__ = []  # A package: its children come from sys.modules.
    modules[name] = module
    sys.modules[name] = module
  for name, module in modules.items():
    parent, _, child = name.rpartition(".")
    if parent and isinstance(modules.get(parent), _AliasModule):
      setattr(modules[parent], child, module)
