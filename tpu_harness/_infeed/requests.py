"""How a host infeed answers the runner's requests for steps of input.

Before each loop the runner requests k steps and later waits for the
answer: how many steps the queue will have for that loop (fewer at the
end of the input). Two ways to answer, chosen when the infeed starts:

- `BufferedRequests` (input of unknown length, or small elements): the
  host thread fills until the queue holds the request's elements, or the
  input ended, and then answers; elements a fill read beyond a request
  stay queued and answer the next request at once, without the thread.
- `StreamedRequests` (large elements, or a TPU's infeed, when tf.data knows
  the input's length): a request is answered at once with the steps the
  input still has, and the host thread enqueues them while the loop
  dequeues them, so the queue holds a few elements, not a loop of them.

The host thread's work goes through `fill(asked) -> (read, enqueued)`,
which the infeed gives; answers are given in request order.
"""

from __future__ import annotations

import collections
import queue as queue_lib
import threading
from typing import Callable, Optional, Tuple

from absl import logging

from tpu_harness._infeed import position as position_lib

Fill = Callable[[int], Tuple[int, int]]


class BufferedRequests:
  """Answers from queued elements, or from the host thread's fills."""

  def __init__(self, fill: Fill, asked: Callable[[int], int],
               queued: bool, name: str):
    """Args:
      fill: the host thread's fill (elements asked) -> (read, enqueued).
      asked: how many elements a fill for a request of k steps reads.
      queued: whether elements enqueued beyond a request can answer the
        next (the emulated queue); else each request is one fill (a TPU's
        infeed, which the host does not see).
      name: the infeed's, for its log.
    """
    self._fill = fill
    self._asked = asked
    self._queued = queued
    self._name = name
    # Guarded by the lock, shared by the host thread and the caller:
    # elements queued that no request was told about yet, whether the
    # input ended, and the thread's requests not answered yet.
    self._lock = threading.Lock()
    self._unclaimed = 0
    self._ended = False
    self._outstanding = 0
    # One per request, oldest first: its answer, or None if the host
    # thread gives it (in `_results`, in the same order).
    self._answers: collections.deque = collections.deque()
    self._results: queue_lib.Queue = queue_lib.Queue()

  def request(self, steps: int) -> Optional[int]:
    """Caller: records a request; returns the steps the host thread must
    work on, or None if queued elements answer it."""
    with self._lock:
      if (self._queued and self._outstanding == 0
          and (self._unclaimed >= steps or self._ended)):
        self._answers.append(self._claim(steps))
        return None
      self._outstanding += 1
      self._answers.append(None)
    return steps

  def answer(self) -> int:
    """Caller: the oldest request's answer (waits for the host thread).

    Raises:
      Exception: what the input raised on the host thread.
    """
    answer = self._answers.popleft() if self._answers else None
    if answer is None:
      answer = self._results.get()
      if isinstance(answer, BaseException):
        raise answer
    return answer

  def serve(self, steps: int, stopping: Callable[[], bool]) -> bool:
    """Host thread: makes up to `steps` elements available and answers;
    returns False (after answering with the error) if the input failed."""
    try:
      available = self._make_available(steps)
    except Exception as error:  # pylint: disable=broad-except
      # A restored position that fails is the runner's to report: it
      # trains again without it.
      if not stopping() and not isinstance(
          error, position_lib.RestoredPositionError):
        logging.error("%s infeed failed: %s", self._name, error)
      with self._lock:
        self._outstanding -= 1
      self._results.put(error)
      return False
    self._results.put(available)
    return True

  def _make_available(self, steps: int) -> int:
    if not self._queued:
      _, moved = self._fill(steps)
      with self._lock:
        self._outstanding -= 1
      return moved
    # One chunk at most (two for the first request, if it drops part of
    # its first chunk): a request is at most one chunk, and a short chunk
    # means the input ended. The queue (two chunks) has room for it once
    # the elements already claimed are dequeued, so this cannot deadlock.
    while True:
      with self._lock:
        if self._unclaimed >= steps or self._ended:
          break
      asked = self._asked(steps)
      read, moved = self._fill(asked)
      with self._lock:
        self._ended = read < asked
        self._unclaimed += moved
    with self._lock:
      self._outstanding -= 1
      return self._claim(steps)

  def _claim(self, steps: int) -> int:
    """Up to `steps` of the unclaimed elements (lock held)."""
    available = min(steps, self._unclaimed)
    self._unclaimed -= available
    return available


class StreamedRequests:
  """Answers at once from the input's known length; the host thread
  enqueues the promised elements while the loop runs."""

  def __init__(self, fill: Fill, remaining: Optional[int]):
    """Args:
      fill: the host thread's fill (elements asked) -> (read, enqueued).
      remaining: the elements the input still has; None: endless.
    """
    self._fill = fill
    self._unpromised = remaining
    self._answers: collections.deque = collections.deque()

  def request(self, steps: int) -> Optional[int]:
    """Caller: promises up to `steps` steps now; returns how many the host
    thread must enqueue (None: none, the input is used up)."""
    count = (steps if self._unpromised is None
             else min(steps, self._unpromised))
    if self._unpromised is not None:
      self._unpromised -= count
    self._answers.append(count)
    return count or None

  def answer(self) -> int:
    return self._answers.popleft()

  def serve(self, count: int) -> int:
    """Host thread: enqueues the `count` promised elements, blocking while
    the queue is full; returns how many the input had (fewer: it ended
    short of its length)."""
    read, _ = self._fill(count)
    return read
