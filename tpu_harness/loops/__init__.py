"""Device loops: `iterations_per_loop` steps in one `Session.run`.

`DeviceLoop` is the interface the runner builds loops through, `BuiltLoop`
what a build gives back; `CpuEmulationLoop` runs the loop on CPU (replicas
on virtual CPU devices) and `TpuLoop` builds it with `tf.compat.v1.tpu`.
The other modules here are their parts: replicas as TPU cores
(`replicas`), gradients combined across them (`cross_shard`), the input
laid out per replica (`step_input`), `host_call`, `eval_metrics` and
`model_fn`'s summaries (`summaries`) on the host.
"""

from tpu_harness.loops.cpu_loop import CpuEmulationLoop
from tpu_harness.loops.cross_shard import CrossShardOptimizer
from tpu_harness.loops.device_loop import BuiltLoop
from tpu_harness.loops.device_loop import DeviceLoop
from tpu_harness.loops.tpu_loop import TpuLoop

__all__ = ["BuiltLoop", "CpuEmulationLoop", "CrossShardOptimizer",
           "DeviceLoop", "TpuLoop"]
