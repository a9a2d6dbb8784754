"""The host's side of running built device loops, whatever the mode.

Per loop::

  infeed.wait()                # the k steps requested before are queued
  infeed.request(next k)       # so the host fills while the device runs
  session.run(fetches, iterations=k)

`run_loops` does that until the steps asked for, or the input, are done;
`run_host_call` runs a loop's host_call on its outfeed. No graph building
here, and no I/O beyond the session runs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import tensorflow as tf

from tpu_harness.loops.device_loop import BuiltLoop


def run_loops(loop: BuiltLoop, session, steps: Optional[int],
              iterations_per_loop: int, clock: Callable[[], float],
              stop: Callable[[], bool] = lambda: False,
              first_requested: bool = False,
              feed: Optional[Callable[[int, int], Optional[Dict]]] = None
              ) -> Iterator[Tuple[int, Dict[str, Any], float]]:
  """Runs loops until `steps` (or the input) is done, or `stop()`.

  The next loop's input is requested before this loop runs, so the host
  fills the infeed while the device works.

  Args:
    loop: the built loop.
    session: a session whose hooks started `loop.infeed`.
    steps: steps to run; None: until the input ends.
    iterations_per_loop: the most steps per run.
    clock: seconds, to time each run.
    stop: checked before each run; True ends the loops.
    first_requested: the first loop's steps, min(iterations_per_loop,
      steps), were requested already (`background_start.BackgroundStart(
      first_request=...)`).
    feed: `feed(steps done before the run, steps of the run)`: more of the
      run's feed, or None.

  Yields:
    (steps run, the run's results, seconds the run took) per loop.
  """
  ipl = iterations_per_loop
  # Feeding costs host time on every run: feed only a count other than the
  # loop's default.
  default = (tf.get_static_value(loop.iterations.op.inputs[0])
             if loop.iterations.op.type == "PlaceholderWithDefault" else None)
  done = 0
  requested = ipl if steps is None else min(ipl, steps)
  if not first_requested:
    loop.infeed.request(requested)
  while requested and not stop():
    count = loop.infeed.wait()
    if count == 0 or stop():
      return
    done += count
    ended = count < requested
    requested = 0 if ended else (
        ipl if steps is None else min(ipl, steps - done))
    if requested:
      loop.infeed.request(requested)
    feed_dict = dict(feed(done - count, count) or {}) if feed else {}
    if count != default:
      feed_dict[loop.iterations] = count
    started = clock()
    try:
      results = session.run(loop.fetches, feed_dict=feed_dict or None)
    except (tf.errors.OutOfRangeError, tf.errors.CancelledError):
      # A streamed input that failed closed the queue under the loop; say
      # why (a MonitoredSession would take OutOfRangeError for the end).
      loop.infeed.raise_if_failed()
      raise
    yield count, results, clock() - started


def run_host_call(loop: BuiltLoop, outfeed: Mapping[str, Any],
                  count: int) -> None:
  """Runs the loop's host_call (if any) for each of its `count` steps, on
  the loop's `outfeed` (trimmed where it was padded:
  `device_loop.trimmed`)."""
  if loop.host_call is not None:
    loop.host_call.run(outfeed, count)
