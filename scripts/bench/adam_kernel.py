"""Adam's update on CPU: graph mode's fused kernel vs element-wise ops.

Why the loop benchmark's Keras comparison depends on the optimizer: a
`tf.compat.v1.train.AdamOptimizer` applies each variable's update with one
fused `ResourceApplyAdam` kernel, Keras's Adam with element-wise ops. This
times, in one `Session.run` of a while loop per variant, one update per
iteration of a variable of --shape:

  fused        AdamOptimizer.apply_gradients (ResourceApplyAdam)
  elementwise  the same update as assign_add / assign_sub ops
  sgd          GradientDescentOptimizer, for scale

and prints microseconds per update and the ratio fused / elementwise, the
median of --repeats alternating runs.

    python -m scripts.bench.adam_kernel [--shape=64,256] [--steps=4000]
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["64", "256"], "Shape of the variable.")
flags.DEFINE_integer("steps", 4000, "Updates per timed run.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed runs per variant.", lower_bound=1)

BETA1, BETA2, EPSILON, RATE = 0.9, 0.999, 1e-8, 1e-3


def _optimizer(optimizer: tf.compat.v1.train.Optimizer):
  def make(variable, gradient):
    return lambda: optimizer.apply_gradients([(gradient, variable)])
  return make


def _elementwise(variable, gradient):
  """Adam as separate ops, with the same bias-corrected rate."""
  m = tf.compat.v1.get_variable("m", variable.shape,
                                initializer=tf.zeros_initializer())
  v = tf.compat.v1.get_variable("v", variable.shape,
                                initializer=tf.zeros_initializer())
  t = tf.compat.v1.get_variable("t", [], initializer=tf.zeros_initializer())

  def update():
    step = t.assign_add(1.0)
    rate = RATE * tf.sqrt(1 - BETA2 ** step) / (1 - BETA1 ** step)
    new_m = m.assign_add((gradient - m) * (1 - BETA1))
    new_v = v.assign_add((tf.square(gradient) - v) * (1 - BETA2))
    return variable.assign_sub(rate * new_m / (tf.sqrt(new_v) + EPSILON))

  return update


VARIANTS: Dict[str, Callable] = {
    "fused": lambda v, g: _optimizer(
        tf.compat.v1.train.AdamOptimizer(RATE, BETA1, BETA2, EPSILON))(v, g),
    "elementwise": _elementwise,
    "sgd": lambda v, g: _optimizer(
        tf.compat.v1.train.GradientDescentOptimizer(RATE))(v, g),
}


def _time(make: Callable, shape: List[int], steps: int) -> float:
  """Microseconds per update, excluding the first run (set-up)."""
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable("w", shape)
    count = tf.compat.v1.placeholder(tf.int32, [])
    update = make(variable, tf.fill(shape, 0.5))

    def body(i):
      with tf.control_dependencies([update()]):
        return i + 1

    loop = tf.while_loop(lambda i: i < count, body, [tf.constant(0)])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(loop, {count: 1})
      started = time.perf_counter()
      session.run(loop, {count: steps})
      return (time.perf_counter() - started) / steps * 1e6


def _after(make: Callable, shape: List[int], steps: int) -> np.ndarray:
  """The variable after `steps` updates from 0.3 with gradient 0.5."""
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable(
        "w", shape, initializer=tf.constant_initializer(0.3))
    op = make(variable, tf.fill(shape, 0.5))()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for _ in range(steps):
        session.run(op)
      return session.run(variable)


def main(argv):
  del argv  # Unused.
  _common.quiet()
  shape = [int(n) for n in FLAGS.shape]
  # The two Adams must be the same update, or the comparison means nothing.
  same = np.allclose(_after(VARIANTS["fused"], shape, 20),
                     _after(VARIANTS["elementwise"], shape, 20), rtol=1e-5)
  times: Dict[str, List[float]] = {name: [] for name in VARIANTS}
  names = list(VARIANTS)
  for repeat in range(FLAGS.repeats):
    for name in names if repeat % 2 == 0 else names[::-1]:
      times[name].append(_time(VARIANTS[name], shape, FLAGS.steps))
  median = {name: statistics.median(t) for name, t in times.items()}
  print(f"\nvariable {shape}, {FLAGS.steps} updates per run, median of "
        f"{FLAGS.repeats}\n")
  _common.print_table(["update", "us per update"],
                      [(name, f"{median[name]:.1f}") for name in names],
                      numeric=[False, True])
  print(f"\n| fused / elementwise | "
        f"{median['fused'] / median['elementwise']:.2f} |")
  print(f"\nfused and elementwise give the same variable after 20 updates: "
        f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
  app.run(main)
