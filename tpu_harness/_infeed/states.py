"""The iterator states a host infeed reads for saves, while it reads ahead.

The infeed's host thread reads ahead of the device loop, so by the time a
save is decided (after a loop) the iterator is past the step being saved.
`StateLog` therefore keeps states read where saves are expected: when the
host thread starts a fill at which one is expected (`expected(step)`), it
reads the state first. A save then takes the newest state at or before its
step and the count of elements to read and drop after restoring it (0 when
the state was read at exactly that step). A save that finds the host
thread idle at its step (or short of it: at a session's start, before the
first fill reads the rest of a chunk partly dropped), short of the input's
end, with no state read there, reads the state then. (A state read after
the iterator met the end of the input or of the run's `take` restores as
ended, whatever comes after.)

The state at element 0 is known without a read: the one restored, or,
where none was, `PASS_START` (the iterator was just initialized at its
pass's first element; a save there holds no state, and the input resumes
by starting the pass again and dropping the elements read since).

Positions are counted in elements read since `begin`, dropped ones
included; the caller turns global steps into them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple

# How long a save waits for the state of a fill its step has consumed.
WAIT_SECS = 60.0

# (elements read since `begin`, the state then, the take's count then).
State = Tuple[int, bytes, int]

# The state of an iterator just initialized, at its pass's first element:
# saved as no state (the pass starts again).
PASS_START = b""


class StateLog:
  """States read while training, shared by the host thread and the
  saver's thread."""

  def __init__(self, read: Callable[[Any], Optional[bytes]]):
    """Args:
      read: `read(session)` serializes the iterator's state now; None if
        it cannot be saved (the reader then stops asking).
    """
    self._read = read
    self._lock = threading.Lock()
    self._changed = threading.Condition(self._lock)
    self._states: List[State] = []
    self._taken = 0
    # Host thread: elements read since `begin`, where a fill in progress
    # ends at most, where a state is being read, whether the last fill met
    # the run's or the input's end (and the input's); the saver's thread:
    # whether it is reading the state.
    self._reads = 0
    self._filling_to: Optional[int] = None
    self._reading_at: Optional[int] = None
    self._at_end = False
    self._used_up = False
    self._caller_reading = False

  def begin(self, taken: int, state: Optional[bytes]) -> None:
    """After the iterator is initialized (and restored to `state`, unless
    None: then at its pass's first element): the take had given `taken`
    before."""
    with self._lock:
      # The state at element 0, the position of a save at the start step
      # (plus the elements dropped): the one restored, or the pass's start.
      self._states = [(0, PASS_START if state is None else state, taken)]
      self._taken = taken
      self._reads = 0
      self._filling_to = None
      self._reading_at = None
      self._at_end = False
      self._used_up = False

  def fill_started(self, session, reads: int, asked: int,
                   expected: Callable[[int, int], bool]) -> None:
    """Host thread: a fill of up to `asked` elements starts, `reads` read
    so far. Reads the state first if `expected(first, last)` says a save
    may come once the fill's elements `first`..`last` (counted as `reads`
    is) were trained on."""
    with self._lock:
      self._changed.wait_for(lambda: not self._caller_reading)
      self._reads = reads
      self._filling_to = reads + asked
      # A state held at `reads` already (the one at the start) needs no
      # second read.
      reading = (asked > 0 and expected(reads, reads + asked - 1)
                 and all(held != reads for held, _, _ in self._states))
      if reading:
        self._reading_at = reads
    if reading:
      try:
        self._add(session, reads)
      finally:
        with self._lock:
          self._reading_at = None
          self._changed.notify_all()

  def fill_ended(self, reads: int, complete: bool = True,
                 input_ended: bool = False) -> None:
    """Host thread: the fill ended, `reads` read so far; unless `complete`,
    it met the end of the run's `take`, or with `input_ended` the
    input's."""
    with self._lock:
      self._reads = reads
      self._filling_to = None
      self._at_end = not complete
      self._used_up = input_ended
      self._changed.notify_all()

  def consumed(self, elements: int) -> None:
    """At least `elements` were trained on: states older than the one a
    save would use are dropped."""
    with self._lock:
      self._drop_before(elements)

  def used_up_at(self, needed: int) -> bool:
    """Whether the input ended with exactly `needed` elements read, all
    of them trained on."""
    with self._lock:
      return (self._used_up and self._filling_to is None
              and self._reads == needed)

  def state_at(self, session, needed: int) -> Optional[State]:
    """The state a save with `needed` elements trained on holds: the
    newest held at or before `needed` (`PASS_START` for a pass's first
    element), reading it now if the host thread is idle at `needed` or
    short of it with none held there. None before `begin`."""
    with self._lock:
      # The loops ran every element of a fill in progress that ends by
      # `needed`, or its state is being read: wait for that.
      self._changed.wait_for(
          lambda: ((self._filling_to is None or self._filling_to > needed)
                   and (self._reading_at is None
                        or self._reading_at > needed)),
          timeout=WAIT_SECS)
      self._drop_before(needed)
      # Idle short of `needed`: at a session's start, before its first
      # fill, which reads the rest of a chunk partly dropped.
      at = self._reads
      idle = (self._filling_to is None and self._reading_at is None
              and at <= needed and not self._at_end)
      reading = idle and all(held != at for held, _, _ in self._states)
      if reading:
        self._caller_reading = True
    if reading:
      try:
        self._add(session, at)
      finally:
        with self._lock:
          self._caller_reading = False
          self._changed.notify_all()
    with self._lock:
      self._drop_before(needed)
      if not self._states or self._states[0][0] > needed:
        return None
      return self._states[0]

  def _add(self, session, reads: int) -> None:
    state = self._read(session)
    if state is not None:
      with self._lock:
        self._states.append((reads, state, self._taken + reads))

  def _drop_before(self, element: int) -> None:
    """Keeps the newest state read at or before `element` read, and newer
    ones (lock held)."""
    while len(self._states) > 1 and self._states[1][0] <= element:
      self._states.pop(0)
