"""Argument checks shared by the public constructors.

Every message names the caller's argument, shows the value and states the
rule, e.g. "`save_steps` (0) must be a positive integer.".
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Sequence


def positive_int(name: str, value: Any) -> int:
  """Returns `value` if it is an integer > 0 (bool excluded).

  Raises:
    TypeError: `value` is not an integer.
    ValueError: `value` is not positive.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"`{name}` ({value!r}) must be a positive integer, "
        f"got {type(value).__name__}.")
  if value <= 0:
    raise ValueError(f"`{name}` ({value!r}) must be a positive integer.")
  return int(value)


def non_negative_int(name: str, value: Any, note: str = "") -> int:
  """Returns `value` if it is an integer >= 0 (bool excluded); `note` is
  added to the rule in messages (e.g. "0 keeps all").

  Raises:
    TypeError: `value` is not an integer.
    ValueError: `value` is negative.
  """
  rule = f"an integer >= 0{f' ({note})' if note else ''}"
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"`{name}` ({value!r}) must be {rule}, got "
                    f"{type(value).__name__}.")
  if value < 0:
    raise ValueError(f"`{name}` ({value!r}) must be {rule}.")
  return int(value)


def boolean(name: str, value: Any) -> bool:
  """Returns `value` if it is True or False.

  Raises:
    TypeError: it is not a bool.
  """
  if not isinstance(value, bool):
    raise TypeError(f"`{name}` ({value!r}) must be True or False.")
  return value


def positive_number(name: str, value: Any, unit: str = "seconds") -> float:
  """Returns `value` if it is a finite real number > 0 (bool excluded), a
  number of `unit`.

  Raises:
    TypeError: `value` is not a real number.
    ValueError: `value` is not positive and finite.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(
        f"`{name}` ({value!r}) must be a positive number of {unit}, "
        f"got {type(value).__name__}.")
  if not 0 < value < float("inf"):
    raise ValueError(f"`{name}` ({value!r}) must be a positive, finite "
                     f"number of {unit}.")
  return value


def exactly_one(named_values: Mapping[str, Any]) -> None:
  """Raises ValueError unless exactly one of the values is not None."""
  given = [name for name, value in named_values.items() if value is not None]
  if len(given) != 1:
    names = " and ".join(f"`{name}`" for name in named_values)
    shown = ", ".join(f"{name}={value!r}" for name, value in
                      named_values.items())
    raise ValueError(f"Exactly one of {names} must be set; got {shown}.")


def at_most_one(named_values: Mapping[str, Any]) -> None:
  """Raises ValueError if more than one of the values is not None."""
  given = [name for name, value in named_values.items() if value is not None]
  if len(given) > 1:
    names = " and ".join(f"`{name}`" for name in given)
    raise ValueError(f"At most one of {names} may be set; both were given.")


def non_empty_path(name: str, value: Any) -> str:
  """Returns `value` as a str if it is a non-empty path (local or gs://).

  Raises:
    TypeError: `value` is not a str or os.PathLike.
    ValueError: `value` is empty.
  """
  if not isinstance(value, (str, os.PathLike)):
    raise TypeError(
        f"`{name}` ({value!r}) must be a directory path (str), "
        f"got {type(value).__name__}.")
  path = os.fspath(value)
  if not isinstance(path, str):
    raise TypeError(f"`{name}` ({value!r}) must be a str path, not bytes.")
  if not path.strip():
    raise ValueError(f"`{name}` ({value!r}) must be a non-empty path.")
  return path


def non_empty_str(name: str, value: Any) -> str:
  """Returns `value` if it is a non-empty str."""
  if not isinstance(value, str) or not value:
    raise ValueError(f"`{name}` ({value!r}) must be a non-empty string.")
  return value


def with_methods(name: str, values: Any, methods: Sequence[str],
                 what: str) -> list:
  """Returns `values` as a list if it is None or an iterable of objects that
  have every one of `methods` (duck typing, as TensorFlow's hooks accept).

  Raises:
    TypeError: `values` is a single such object, not iterable, or holds an
      item that lacks one of `methods`.
  """
  if values is None:
    return []
  if all(callable(getattr(values, m, None)) for m in methods):
    raise TypeError(
        f"`{name}` ({values!r}) must be a list of {what}, got a single one; "
        f"pass [{type(values).__name__}(...)].")
  if isinstance(values, (str, bytes)):
    raise TypeError(f"`{name}` ({values!r}) must be a list of {what}.")
  try:
    items = list(values)
  except TypeError:
    raise TypeError(
        f"`{name}` ({values!r}) must be a list of {what}, "
        f"got {type(values).__name__}.") from None
  for index, item in enumerate(items):
    if isinstance(item, type):
      # A class has the methods too, unbound: calling them fails later.
      raise TypeError(
          f"`{name}[{index}]` ({item!r}) must be an instance, not a class; "
          f"pass {item.__name__}().")
    missing = [m for m in methods if not callable(getattr(item, m, None))]
    if missing:
      raise TypeError(
          f"`{name}[{index}]` ({item!r}) must be a {what[:-1]}: it lacks "
          f"{', '.join(m + '()' for m in missing)} (a listener has "
          f"{', '.join(m + '()' for m in methods)}; subclassing "
          f"CheckpointSaverListener provides them all).")
  return items
