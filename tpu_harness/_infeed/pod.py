"""The infeeds of a pod's hosts (see `tpu_harness.tpu.pod`), driven as one.

Each host of a pod has its own input pipeline, iterator and infeed, on its
own device; `per_host` builds them, and `PodInfeed` requests, waits for,
starts and stops them together.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Sequence, Union

import tensorflow as tf

from tpu_harness._infeed.host import HostInfeed
from tpu_harness.tpu.pod import host_device


def per_host(name: str, devices: Sequence[Optional[str]],
             build: Callable[[int, str], HostInfeed], *, as_pod: bool
             ) -> Union[HostInfeed, "PodInfeed"]:
  """One infeed per host: `build(host, infeed name)` on the host's device
  (None: unplaced). With `as_pod`, the infeeds are named for their hosts
  and returned as a PodInfeed (its `dequeue()` gives one element per
  host), even of one host; else the one infeed is returned as it is."""
  infeeds = []
  for host, device in enumerate(devices):
    with tf.device(device) if device else contextlib.nullcontext():
      infeeds.append(build(host, f"{name}_host_{host}" if as_pod else name))
  if as_pod:
    return PodInfeed(infeeds)
  (infeed,) = infeeds
  return infeed


class PodInfeed:
  """The hosts' infeeds, requested, waited for, started and stopped as one
  (a `protocol.Infeed`).

  `dequeue()` gives one element per host, each dequeued on its host.
  """

  def __init__(self, infeeds: Sequence[HostInfeed]):
    self._infeeds = list(infeeds)

  @property
  def hosts(self) -> List[HostInfeed]:
    return list(self._infeeds)

  @property
  def element_spec(self) -> Any:
    return self._infeeds[0].element_spec

  @property
  def streams(self) -> bool:
    return all(infeed.streams for infeed in self._infeeds)

  def dequeue(self) -> List[Any]:
    """Each host's next element, dequeued on that host."""
    elements = []
    for host, infeed in enumerate(self._infeeds):
      with tf.device(host_device(host)):
        elements.append(infeed.dequeue())
    return elements

  def start(self, session) -> None:
    for infeed in self._infeeds:
      infeed.start(session)

  def request(self, steps: int) -> None:
    for infeed in self._infeeds:
      infeed.request(steps)

  def wait(self) -> int:
    """The steps every host has queued (an input that ended on one host
    ends them all)."""
    return min([infeed.wait() for infeed in self._infeeds])

  def stop(self) -> None:
    for infeed in self._infeeds:
      infeed.stop()

  def raise_if_failed(self) -> None:
    for infeed in self._infeeds:
      infeed.raise_if_failed()
