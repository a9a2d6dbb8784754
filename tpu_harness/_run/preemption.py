"""Preemption: the first SIGTERM asks for a clean stop, a second one kills.

Cloud TPU preempts with SIGTERM; Ctrl-C sends SIGINT, which is treated the
same way. While a `PreemptionWatcher` is active (in the main thread), the
first such signal only sets `requested`; the runner checks
it between loops, so the current loop finishes, the hooks' `end()` saves a
checkpoint and calls the listeners' `end`, and training returns normally.
The handler also restores the default action of that signal, so a second
one ends the process at once, as an unhandled SIGTERM (or SIGINT) does.

Python runs signal handlers between bytecodes of the main thread, so a
SIGTERM that arrives during a `Session.run` is seen when that run returns:
"finish the current loop" is what happens anyway. POSIX does not queue a
second SIGTERM that arrives before the first is handled.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict, Sequence

from absl import logging


class PreemptionWatcher:
  """Context manager that turns the first SIGTERM or SIGINT into a stop
  request."""

  def __init__(self,
               signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous: Dict[int, object] = {}
    self._requested = False
    self._signal_name = ""

  @property
  def requested(self) -> bool:
    """Whether a stop was asked for."""
    return self._requested

  @property
  def signal_name(self) -> str:
    return self._signal_name

  def __enter__(self) -> "PreemptionWatcher":
    if threading.current_thread() is not threading.main_thread():
      logging.info("Not watching for preemption: signal handlers can only be "
                   "installed from the main thread.")
      return self
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      if signal.getsignal(signum) == self._handle:
        signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame  # Unused.
    self._requested = True
    self._signal_name = signal.Signals(signum).name
    # A second signal of this kind now ends the process at once.
    signal.signal(signum, signal.SIG_DFL)
    logging.warning("Received %s: finishing the current loop, then saving a "
                    "checkpoint and stopping. Send it again to exit at once.",
                    self._signal_name)
