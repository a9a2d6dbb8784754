"""Cloud TPUs and pods: resolving a TPU by name (`cluster`), a pod's hosts
and devices (`pod`), and the check on CPU that a step can run on a TPU
(`check`)."""

from tpu_harness.tpu.check import check_model
from tpu_harness.tpu.check import Problem
from tpu_harness.tpu.cluster import check_tpu_devices
from tpu_harness.tpu.cluster import resolve_master

__all__ = ["Problem", "check_model", "check_tpu_devices", "resolve_master"]
