"""TPUEstimator-style programs on tpu_harness against a plain session loop.

Two programs of our own (`scripts/bench/estimator_programs.py`), written as
TPUEstimator programs are, each with its users' kind of input pipeline:

- `mnist`: a conv net like mnist_tpu.py's (two 5x5 convolutions, a dense
  layer of 1024 with dropout, Adam) on 28x28 images read from TFRecords,
  decoded, then `cache().repeat().shuffle(50000).batch(64)`.
- `resnet`: a small residual net with batch norm and momentum on 64x64
  images whose JPEG records are shuffled (1024) before they are decoded,
  randomly cropped and flipped (stateful random ops), batched (32) and
  prefetched, as resnet_main.py's input does.

Each runs through `tpu_harness.estimator.tpu.TPUEstimator(use_tpu=False)`
with default settings (resume_input='exact', checkpoints every 600 s) at
`iterations_per_loop` 10 and 100, and, as the baseline, the same `model_fn`
and `input_fn` run as TPUEstimator with use_tpu=False ran them
(`scripts/bench/estimator_baseline.py`, read from tensorflow_estimator's
source: an initializable iterator initialized as the session starts, one
step per `Session.run` in a `tf.compat.v1.train.MonitoredTrainingSession`
with Estimator's hooks and Saver; evaluation by TensorFlow's own
`_evaluate_once`), in the same
process, runs interleaved, in turn (the baseline first in even repeats,
last in odd ones: whatever runs just before a measure affects it, the
same for both sides). Reported, as ratios to the baseline:

- steady steps/sec, both sides over the same steps: from the end of the
  first loop past the first tenth of the steps to the start of the last
  loop (400 steps: steps 40 to 390 at `iterations_per_loop=10`, 100 to
  300 at 100), each loop of ours reading the next one's input meanwhile;
- the size of the last checkpoint (data and index files);
- set-up: seconds from the call of a fresh `train()` of one loop to the
  end of that loop (the baseline: of as many steps), less those steps at
  the side's steady rate (the first loop of a longer `train()` also reads
  the next loop's input, which the baseline reads in the steps after);
  and a switch: an `evaluate()`-then-`train()` pair of one loop of steps
  each, resumed from a checkpoint, from the first call to
  the return of the second (its last checkpoint written and its session
  closed), the mean of --switches in a row on each side after a full
  garbage collection (each side then pays the collections of its own
  graphs, as in a train-and-eval loop); the baseline's evaluation does
  what Estimator's `evaluate()` did (metric updates per step, then their
  values read and written as summaries into a new eval directory);
- resume: a one-step `train()` of a linear model on the same input from a
  checkpoint at --resume_steps (the input's position at that step), against
  the same `train()` from no checkpoint. The resnet input is read at batch
  1 for this, so reaching 100k steps takes minutes, not hours.

    python -m scripts.bench.estimator [--programs=mnist,resnet]
        [--steps=400] [--iterations=10,100] [--repeats=5] [--switches=3]
        [--resume_steps=100000]

Targets (issue 23): steps/sec ratio >= 1.0 at both iterations_per_loop;
checkpoint size <= 1.1x the baseline's; set-up and switch no slower; resume
at 100k <= 1.5x a fresh start.
"""

from __future__ import annotations

import gc
import glob
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from scripts.bench import _common  # Before TensorFlow.

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags

from scripts.bench import estimator_baseline as baseline
from scripts.bench import estimator_programs as programs
from tpu_harness import estimator as tf_estimator
import tensorflow.compat.v1 as tf
# pylint: enable=g-import-not-at-top

FLAGS = flags.FLAGS
T = TypeVar("T")
flags.DEFINE_list("programs", ["mnist", "resnet"], "Programs to run.")
flags.DEFINE_integer("steps", 400, "Training steps per timed run.",
                     lower_bound=20)
flags.DEFINE_list("iterations", ["10", "100"], "iterations_per_loop values.")
flags.DEFINE_integer("repeats", 5, "Interleaved runs of each.", lower_bound=1)
flags.DEFINE_integer("switches", 3,
                     "Switches in a row per side and repeat (their mean is "
                     "the repeat's).", lower_bound=1)
flags.DEFINE_integer("resume_steps", 100000,
                     "Global step of the checkpoint a resume starts from; "
                     "0 skips the resume measurement.", lower_bound=0)
flags.DEFINE_integer("examples", 12000, "Distinct training examples.",
                     lower_bound=64)


# ----------------------------------------------------------------------------
# Timing.


class Times(tf.train.SessionRunHook):
  """(seconds, global step) after every Session.run; the first at start."""

  def __init__(self, read_last_step: bool = True):
    """`read_last_step`: read the global step as the session ends (a run
    of its own; the rates and set-up need it, a timed call does not)."""
    self.started = time.monotonic()
    self._read_last_step = read_last_step
    self.marks: List[Tuple[float, int]] = []
    self.last_step: Optional[int] = None  # The global step at the end.
    self.returned = float("nan")  # When the timed calls returned.
    self._step = None

  def begin(self):
    self._step = tf.train.get_global_step()

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._step)

  def after_run(self, run_context, run_values):
    # The step fetched is from before the run; the mark is at its end.
    self.marks.append((time.monotonic(), int(run_values.results)))

  def end(self, session):
    if self._read_last_step:
      self.last_step = int(session.run(self._step))

  def first_step_secs(self) -> float:
    """From the start to the end of the first run."""
    return self.marks[0][0] - self.started

  def call_secs(self) -> float:
    """From the start to the return of the timed calls."""
    return self.returned - self.started

  def _ends(self) -> List[Tuple[float, int]]:
    """(when, steps done since the start) at the end of each run."""
    start = self.marks[0][1]
    # A run's last step is the step the next run fetched before it.
    if self.last_step is None:
      raise ValueError("The session did not end: no last step.")
    after = [step for _, step in self.marks[1:]] + [self.last_step]
    return [(when, step - start) for (when, _), step in zip(self.marks,
                                                            after)]

  def _run_reaching(self, steps: int) -> Tuple[float, int]:
    for when, done in self._ends():
      if done >= steps:
        return when, done
    raise ValueError(f"No run reached {steps} steps from the start.")

  def steady_rate(self, from_step: Optional[int] = None,
                  to_step: Optional[int] = None) -> float:
    """Steps per second from the end of the run that reached `from_step`
    steps since the start (None: the end of the first tenth of the runs)
    to the end of the one that reached `to_step` (None: the last), so that
    runs of one step and loops of many are timed over the same steps."""
    ends = self._ends()
    if from_step is None:
      first = ends[max(1, len(ends) // 10) - 1]
    else:
      first = self._run_reaching(from_step)
    last = ends[-1] if to_step is None else self._run_reaching(to_step)
    (t0, s0), (t1, s1) = first, last
    return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")

  def setup_secs(self, steps: int, rate: Optional[float] = None) -> float:
    """From the start to the end of the run that reached `steps` steps,
    less those steps at `rate` (None: this run's `steady_rate()`): the
    set-up before training, both sides measured at the same step (a loop
    of `steps` steps; the baseline's `steps`-th run), so that each pays the
    warm-up of the same steps."""
    when, done = self._run_reaching(steps)
    if rate is None:
      rate = self.steady_rate()
    return when - self.started - done / rate


def in_turn(sides: List[T], repeat: int) -> List[T]:
  """`sides` in the order measured in repeat `repeat`: as given in even
  repeats, reversed in odd ones."""
  return list(reversed(sides)) if repeat % 2 else list(sides)


def steady_steps(steps: int, ipl: int) -> Tuple[int, int]:
  """The steps both sides' steady rate is timed over, of `steps` at
  `ipl` steps per loop: from the end of the first loop past the first
  tenth to the start of the last loop, whose input the infeed read during
  the loop before."""
  return (-(-max(1, steps // 10) // ipl) * ipl, (steps - 1) // ipl * ipl)


def train_ours(model_fn, input_fn, batch: int, model_dir: str, ipl: int,
               steps: int, eval_fn=None) -> Times:
  """A train() through the TPUEstimator API at default settings; with
  `eval_fn`, an evaluate() of `steps` steps first (timed too)."""
  times = Times(read_last_step=eval_fn is None)
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn, use_tpu=False, train_batch_size=batch,
      eval_batch_size=batch,
      config=tf_estimator.tpu.RunConfig(
          model_dir=model_dir, log_step_count_steps=10**9,
          tpu_config=tf_estimator.tpu.TPUConfig(iterations_per_loop=ipl)))
  if eval_fn is not None:
    estimator.evaluate(eval_fn, steps=steps)
  estimator.train(input_fn, steps=steps, hooks=[times])
  times.returned = time.monotonic()
  return times


def train_baseline(model_fn, input_fn, batch: int, model_dir: str,
                   steps: int, eval_fn=None) -> Times:
  """The same model_fn and input_fn as TPUEstimator(use_tpu=False).train()
  ran them (`estimator_baseline.train`), `steps` steps; with `eval_fn`, an
  `evaluate()` of `steps` steps first (`estimator_baseline.evaluate`,
  timed too). The evaluation's directory is new to each side's row of
  switches, as ours is in this benchmark, so that both write the eval
  graph once a row."""
  params = {"batch_size": batch}
  times = Times(read_last_step=eval_fn is None)
  if eval_fn is not None:
    baseline.evaluate(model_fn, eval_fn, params, model_dir, steps)
  baseline.train(model_fn, input_fn, params, model_dir, steps, hooks=[times])
  times.returned = time.monotonic()
  return times


def _switches(switch: Callable[[], Times], count: int) -> List[float]:
  """Seconds of each of `count` switches in a row, after a full garbage
  collection. Each side's graphs are freed by CPython's full collections,
  which come every 10 younger ones; ours' switch makes more objects (5
  younger collections a switch against the baseline's 3, measured on the
  resnet program) and so ran the full collection (0.05 to 0.13 s) that
  freed both sides' graphs in nearly every switch when they alternated
  one by one, the baseline's in none. Switches in a row from a clean heap
  pay each for its own side's collections, as a train-and-eval loop's do."""
  gc.collect()
  return [switch().call_secs() for _ in range(count)]


def _seconds(values: List[float]) -> str:
  """`values` as "1.23" or "1.23 (1.20, 1.25, 1.24)": the mean, and each
  one where there are several."""
  mean = f"{statistics.mean(values):.2f}"
  if len(values) == 1:
    return mean
  return f"{mean} ({', '.join(f'{value:.2f}' for value in values)})"


def resume_ratio(input_fn, batch: int, root: str, steps: int) -> float:
  """A one-step train() from a checkpoint at `steps` over a fresh one."""
  trained = os.path.join(root, "resume_trained")
  train_ours(programs.linear_model_fn, input_fn, batch, trained, 1000, steps)
  fresh, resumed = [], []
  for repeat in range(FLAGS.repeats):
    copy = os.path.join(root, f"resume_{repeat}")
    tf.io.gfile.makedirs(copy)
    for path in glob.glob(os.path.join(trained, "*")):
      if os.path.isfile(path):
        tf.io.gfile.copy(path, os.path.join(copy, os.path.basename(path)))
    resumed.append(train_ours(programs.linear_model_fn, input_fn, batch,
                              copy, 1, 1).first_step_secs())
    fresh.append(train_ours(programs.linear_model_fn, input_fn, batch,
                            os.path.join(root, f"fresh_{repeat}"), 1,
                            1).first_step_secs())
  return statistics.median(resumed) / statistics.median(fresh)


def run_program(name: str, root: str) -> Dict[str, float]:
  data = os.path.join(root, "data")
  tf.io.gfile.makedirs(data)
  if name == "mnist":
    input_fn = programs.mnist_input_fn(
        programs.write_mnist_records(data, FLAGS.examples))
    model_fn, batch, resume_batch = programs.mnist_model_fn, 64, 64
  else:
    input_fn = programs.resnet_input_fn(
        programs.write_jpeg_records(data, FLAGS.examples))
    model_fn, batch, resume_batch = programs.resnet_model_fn, 32, 1
  ipls = [int(value) for value in FLAGS.iterations]
  steady = {ipl: steady_steps(FLAGS.steps, ipl) for ipl in ipls}
  measured: Dict[str, List[float]] = {}
  sizes: Dict[str, int] = {}

  def note(key, value):
    measured.setdefault(key, []).append(value)

  for repeat in range(FLAGS.repeats):
    rates: Dict[str, Dict[int, float]] = {}
    runs = [("baseline", None)] + [(f"ipl={ipl}", ipl) for ipl in ipls]
    for label, ipl in in_turn(runs, repeat):
      model_dir = os.path.join(root, f"{label}_{repeat}")
      if ipl is None:
        times = train_baseline(model_fn, input_fn, batch, model_dir,
                               FLAGS.steps)
      else:
        times = train_ours(model_fn, input_fn, batch, model_dir, ipl,
                           FLAGS.steps)
      # The baseline's over the steps of each iterations_per_loop.
      rates[label] = {at: times.steady_rate(*steady[at])
                      for at in ([ipl] if ipl else ipls)}
      for at, rate in rates[label].items():
        note(f"{label} rate {at}", rate)
      sizes[label] = _common.checkpoint_bytes(
          tf.train.latest_checkpoint(model_dir))
      print(f"  {name} {label} run {repeat}: " + ", ".join(
          f"{rate:.1f} steps/sec over steps {steady[at][0]} to "
          f"{steady[at][1]}" for at, rate in rates[label].items()),
            flush=True)
    # Set-up: a fresh train() of one loop to its end, less its steps at the
    # steady rate of the same side and repeat. (The first loop of a longer
    # train() also reads the next loop's input, which the baseline reads
    # in the steps after, and the last loop none.)
    for ipl in ipls:
      for label, train in in_turn([
          ("baseline", lambda directory, ipl=ipl: train_baseline(
              model_fn, input_fn, batch, directory, ipl)),
          (f"ipl={ipl}", lambda directory, ipl=ipl: train_ours(
              model_fn, input_fn, batch, directory, ipl, ipl))], repeat):
        secs = train(os.path.join(root, f"setup_{label}_{ipl}_{repeat}")
                     ).setup_secs(ipl, rates[label][ipl])
        note(f"{label} set-up {ipl}", secs)
        print(f"  {name} {label} run {repeat}: set-up {secs:.2f} s of a "
              f"train() of {ipl} steps", flush=True)
    # Evaluate -> train switches of one loop each, from the checkpoint:
    # --switches in a row on each side, as a train-and-eval loop makes
    # them, after a full collection, so that each side's switches pay for
    # the collection of their own garbage (see `_switches`).
    for ipl in ipls:
      secs = {}
      for label, switch in in_turn([
          ("baseline", lambda ipl=ipl: train_baseline(
              model_fn, input_fn, batch,
              os.path.join(root, f"baseline_{repeat}"), ipl,
              eval_fn=input_fn)),
          ("ours", lambda ipl=ipl: train_ours(
              model_fn, input_fn, batch,
              os.path.join(root, f"ipl={ipl}_{repeat}"), ipl, ipl,
              eval_fn=input_fn))], repeat):
        secs[label] = _switches(switch, FLAGS.switches)
      note(f"baseline switch {ipl}", statistics.mean(secs["baseline"]))
      note(f"ipl={ipl} switch", statistics.mean(secs["ours"]))
      print(f"  {name} run {repeat}: switch {_seconds(secs['ours'])} s at "
            f"ipl={ipl}, baseline {_seconds(secs['baseline'])} s",
            flush=True)

  def median(key):
    return statistics.median(measured[key])

  results = {}
  for ipl in ipls:
    label = f"ipl={ipl}"
    results[f"{label} steps/sec"] = median(f"{label} rate {ipl}") / median(
        f"baseline rate {ipl}")
    results[f"{label} checkpoint size"] = sizes[label] / sizes["baseline"]
    results[f"{label} set-up"] = median(f"{label} set-up {ipl}") / median(
        f"baseline set-up {ipl}")
    results[f"{label} switch"] = median(f"{label} switch") / median(
        f"baseline switch {ipl}")
  print(f"\n{name}: baseline checkpoint {sizes['baseline']:,} bytes, "
        + ", ".join(f"{median(f'baseline rate {ipl}'):.1f} steps/sec over "
                    f"steps {steady[ipl][0]} to {steady[ipl][1]} and set-up "
                    f"{median(f'baseline set-up {ipl}'):.2f} s at {ipl}"
                    for ipl in ipls))
  if FLAGS.resume_steps:
    results["resume"] = resume_ratio(input_fn, resume_batch, root,
                                     FLAGS.resume_steps)
  return results


def main(argv):
  del argv  # Unused.
  for value in FLAGS.iterations:
    ipl = int(value)
    first, last = steady_steps(FLAGS.steps, ipl)
    if first >= last:
      raise app.UsageError(
          f"--steps={FLAGS.steps} leaves no loop of {ipl} steps to time the "
          f"steady rate over (after the first tenth of the steps, before "
          f"the last loop); give at least {3 * ipl} steps.")
  _common.quiet()
  table = {}
  for name in FLAGS.programs:
    with tempfile.TemporaryDirectory() as root:
      table[name] = run_program(name, root)
  print(f"\nratios to the baseline (median of {FLAGS.repeats}; "
        f"{FLAGS.steps} steps per run)\n")
  rows = []
  for name, results in table.items():
    for measure, ratio in results.items():
      target = ("<= 1.5" if measure == "resume" else
                ">= 1.0" if measure.endswith("steps/sec") else
                "<= 1.1" if measure.endswith("size") else "<= 1.0")
      rows.append((name, measure, f"{ratio:.2f}", target))
  _common.print_table(["program", "measure", "ours / baseline", "target"],
                      rows, numeric=[False, False, True])


if __name__ == "__main__":
  app.run(main)
