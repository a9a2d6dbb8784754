"""Every script in scripts/bench/ runs end to end at tiny sizes and prints
its table (no timing asserted)."""

import math
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(name, *flags, ok=True):
  """Runs scripts/bench/NAME with `flags`; returns (stdout, stderr, first
  cells of its table rows)."""
  result = subprocess.run(
      [sys.executable, "-m", f"scripts.bench.{name}", *flags], cwd=ROOT,
      capture_output=True, text=True, timeout=900, check=False)
  if ok:
    assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  return result, rows


def test_adam_kernel_prints_every_update_and_the_two_adams_agree():
  result, rows = _bench("adam_kernel", "--shape=8,4", "--steps=20",
                        "--repeats=1")
  for name in ("fused", "elementwise", "sgd", "fused / elementwise"):
    assert name in rows, (name, result.stdout)
  assert ("fused and elementwise give the same variable after 20 updates: "
          "yes") in result.stdout


def test_checkpoint_prints_stalls_and_ratios():
  result, rows = _bench("checkpoint", "--megabytes=1", "--saves=1",
                        "--repeats=1", "--runs_between_saves=4", "--matrix=16")
  for name in ("sync", "async", "async stall / sync stall",
               "sync save MB/s / file copy MB/s"):
    assert name in rows, (name, result.stdout)


def test_end_of_train_prints_both_variants_and_the_target_line():
  result, rows = _bench("end_of_train", "--runs=1", "--loops=2",
                        "--iterations_per_loop=2", "--batch_size=4",
                        "--image_work=1")
  assert rows[1:] == ["harness", "autotune"], result.stdout
  assert re.search(r"harness: max end stall [0-9.]+ s; target <= 0.2 s: "
                   r"(met|NOT met)", result.stdout), result.stdout


def test_estimator_prints_every_measure_against_the_baseline():
  result, rows = _bench("estimator", "--programs=mnist,resnet", "--steps=20",
                        "--iterations=2", "--repeats=1", "--switches=2",
                        "--resume_steps=40", "--examples=64")
  measures = [line.split("|")[2].strip() for line in result.stdout.splitlines()
              if line.startswith("| ") and "---" not in line][1:]
  for program in ("mnist", "resnet"):
    assert rows.count(program) == 5, result.stdout
    # Each side's switches in a row (their mean, then each), as measured.
    switches = r"\d+\.\d\d \(\d+\.\d\d, \d+\.\d\d\)"
    assert re.search(rf"^  {program} run 0: switch {switches} s at ipl=2, "
                     rf"baseline {switches} s$", result.stdout,
                     re.MULTILINE), result.stdout
  assert measures[:5] == ["ipl=2 steps/sec", "ipl=2 checkpoint size",
                          "ipl=2 set-up", "ipl=2 switch", "resume"]
  ratios = [float(line.split("|")[3]) for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line
            and "ours / baseline" not in line]
  assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios), (
      result.stdout)


@pytest.mark.parametrize("repeat, order", [
    (0, ["baseline", "ipl=10", "ipl=100"]),
    (1, ["ipl=100", "ipl=10", "baseline"]),
    (2, ["baseline", "ipl=10", "ipl=100"]),
    (7, ["ipl=100", "ipl=10", "baseline"]),
])
def test_the_sides_take_turns_being_measured_first(repeat, order):
  from scripts.bench import estimator  # pylint: disable=g-import-not-at-top
  sides = ["baseline", "ipl=10", "ipl=100"]
  assert estimator.in_turn(sides, repeat) == order
  assert sides == ["baseline", "ipl=10", "ipl=100"]  # Not reordered.


@pytest.mark.parametrize("steps, ipl, window", [
    (400, 10, (40, 390)),
    (400, 100, (100, 300)),
    (400, 1, (40, 399)),
    (450, 100, (100, 400)),  # The last loop is a partial one.
    (20, 2, (2, 18)),
    (20, 10, (10, 10)),  # No loop between: refused (below).
])
def test_the_steady_steps_skip_the_first_tenth_and_the_last_loop(
    steps, ipl, window):
  from scripts.bench import estimator  # pylint: disable=g-import-not-at-top
  assert estimator.steady_steps(steps, ipl) == window


def test_estimator_refuses_too_few_steps_for_a_steady_rate():
  result, _ = _bench("estimator", "--steps=20", "--iterations=10",
                     "--repeats=1", "--resume_steps=0", ok=False)
  assert result.returncode != 0
  assert "--steps=20 leaves no loop of 10 steps" in result.stderr, (
      result.stderr[-3000:])


def test_estimator_baseline_trains_and_evaluates_as_estimator_did(tmp_path):
  """The baseline's switch evaluates the checkpoint first, writing its
  metrics, then the checkpoint's path, into its eval directory at the
  checkpoint's step (as Estimator's evaluate() did), then trains `steps`
  steps more from it."""
  # pylint: disable=g-import-not-at-top
  from scripts.bench import estimator
  from scripts.bench import estimator_programs as programs
  import tensorflow.compat.v1 as tf
  # pylint: enable=g-import-not-at-top
  input_fn = programs.mnist_input_fn(
      programs.write_mnist_records(str(tmp_path), 64))
  model_dir = str(tmp_path / "model")
  first = estimator.train_baseline(programs.mnist_model_fn, input_fn, 8,
                                   model_dir, 3)
  assert first.last_step == 3
  evaluated = []

  def eval_fn(params):
    evaluated.append(tf.train.load_variable(model_dir, "global_step"))
    return input_fn(params)

  estimator.train_baseline(programs.mnist_model_fn, input_fn, 8, model_dir,
                           2, eval_fn=eval_fn)
  assert evaluated == [3]
  assert tf.train.load_variable(model_dir, "global_step") == 5
  (events,) = tf.io.gfile.glob(str(tmp_path / "model" / "eval_2" / "events*"))
  values = [(event.step, value.tag)
            for event in tf.train.summary_iterator(events)
            for value in event.summary.value]
  assert values == [(3, "accuracy"), (3, "loss"), (3, "checkpoint_path")]


def _times(ends, steps_before, last_step=None):
  """A Times started at 0 whose runs ended at `ends`, each having fetched
  the global step of `steps_before` before it ran; the session ended at
  `last_step` (None: one more run of the same length as the one before)."""
  from scripts.bench import estimator  # pylint: disable=g-import-not-at-top
  times = estimator.Times()
  times.started = 0.0
  times.marks = list(zip(ends, steps_before))
  times.last_step = (2 * steps_before[-1] - steps_before[-2]
                     if last_step is None else last_step)
  return times


@pytest.mark.parametrize("ends, steps_before, steps, setup", [
    # One step per run, 0.1 s each at the steady rate; the first run ended
    # at 1.0: 0.9 s before training, whichever step it is measured at.
    ([1.0 + 0.1 * i for i in range(40)], list(range(40)), 1, 0.9),
    ([1.0 + 0.1 * i for i in range(40)], list(range(40)), 10, 0.9),
    # Loops of 10 steps, 1 s each; the first ended at 1.9: the same.
    ([1.9 + i for i in range(12)], [10 * i for i in range(12)], 10, 0.9),
    # Warm-up: the second step took 0.2 s more than steady. Measured at
    # step 10 it counts, as it does in a first loop of 10; at step 1 not.
    ([1.0] + [1.3 + 0.1 * i for i in range(39)], list(range(40)), 10, 1.1),
    ([1.0] + [1.3 + 0.1 * i for i in range(39)], list(range(40)), 1, 0.9),
    # Resumed at step 500: steps counted from there.
    ([1.9 + i for i in range(12)], [500 + 10 * i for i in range(12)], 10,
     0.9),
])
def test_setup_is_measured_at_the_same_step_on_both_sides(
    ends, steps_before, steps, setup):
  assert _times(ends, steps_before).setup_secs(steps) == pytest.approx(setup)


# Steps of 0.1 s, but the first 100 took 0.2 s each (a warm-up).
_WARM = [0.2 * (i + 1) for i in range(100)] + [
    20.0 + 0.1 * (i + 1) for i in range(300)]


@pytest.mark.parametrize("ends, steps_before, from_step, to_step, rate", [
    # One step per run, timed from step 100: 10 steps/sec.
    (_WARM, list(range(400)), 100, None, 10.0),
    # Loops of 100 steps of the same times, from the same step: the same.
    (_WARM[99::100], [0, 100, 200, 300], 100, None, 10.0),
    # From step 40, the one-step runs count 60 warm-up steps.
    (_WARM, list(range(400)), 40, None, 360 / (50.0 - 8.0)),
    # Without from_step: after the first tenth of the runs, whatever their
    # length (the loops' from step 100, the steps' from step 40).
    (_WARM[99::100], [0, 100, 200, 300], None, None, 10.0),
    (_WARM, list(range(400)), None, None, 360 / (50.0 - 8.0)),
    # A last loop 2 s faster (no next loop's input to read): counted
    # without to_step, not up to the start of the last loop.
    ([20.0, 30.0, 40.0, 48.0], [0, 100, 200, 300], 100, None, 300 / 28.0),
    ([20.0, 30.0, 40.0, 48.0], [0, 100, 200, 300], 100, 300, 10.0),
    (_WARM, list(range(400)), 100, 300, 10.0),
    # Resumed at step 500: steps counted from there.
    (_WARM[99::100], [500, 600, 700, 800], 100, 300, 10.0),
])
def test_the_steady_rate_is_timed_over_the_steps_asked(
    ends, steps_before, from_step, to_step, rate):
  assert _times(ends, steps_before).steady_rate(
      from_step, to_step) == pytest.approx(rate)


def test_setup_subtracts_the_steps_at_the_rate_given():
  # Both spent 20 s on the first 100 steps, 10 s more than steady.
  for ends, before in [(_WARM, list(range(400))),
                       (_WARM[99::100], [0, 100, 200, 300])]:
    times = _times(ends, before)
    assert times.setup_secs(100, times.steady_rate(100, 300)) == \
        pytest.approx(10.0)
  # A train() of one loop: its only run reached the session's last step.
  assert _times([21.0], [0], last_step=100).setup_secs(100, 10.0) == \
      pytest.approx(11.0)


def test_setup_of_more_steps_than_the_runs_gave_is_an_error():
  with pytest.raises(ValueError, match="No run reached 40 steps"):
    _times([1.0, 2.0, 3.0], [0, 10, 20]).setup_secs(40)


def test_infeed_prints_both_batch_sizes_with_ratios():
  result, _ = _bench("infeed", "--repeats=1", "--steps=4",
                     "--iterations_per_loop=2", "--batch_size=2")
  rows = [line for line in result.stdout.splitlines()
          if line.startswith("| large") or line.startswith("| small")]
  assert len(rows) == 2, result.stdout
  assert re.search(r"\| >= 0.9 \| (yes|NO) \|$", rows[0]), rows[0]


def test_interleave_prints_every_workload_with_its_ratio():
  result, rows = _bench("interleave", "--repeats=2", "--batches=2",
                        "--warmup=1", "--files=2", "--records=8",
                        "--batch_size=4")
  assert rows == ["workload", "records", "decode", "inside"], result.stdout
  assert "| workload | tf.data | rewritten | rewritten / tf.data |" in (
      result.stdout)
  for line in result.stdout.splitlines()[-3:]:
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert len(cells) == 4 and all(
        float(cell) > 0 for cell in cells[1:]), line


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_loop_prints_every_variant_and_the_ratios(optimizer):
  result, rows = _bench("loop", "--steps=200", "--repeats=1", "--loops=1,100",
                        f"--optimizer={optimizer}")
  assert f"MLP 64-256-10, {optimizer}" in result.stdout
  for name in ("raw", "runner/1", "keras/1", "runner/100", "keras/100",
               "mts", "runner/100 / raw", "runner/100 / keras/100",
               "runner/1 / mts"):
    assert name in rows, (name, result.stdout)


def test_loop_refuses_steps_that_do_not_fit_the_loops():
  result, _ = _bench("loop", "--steps=150", "--repeats=1", "--loops=1,100",
                     ok=False)
  assert result.returncode != 0
  assert "--steps must be a multiple of every --loops value" in result.stderr


def test_pod_prints_a_row_per_pod_size_against_one_process():
  result, rows = _bench("pod", "--hosts=1,2", "--steps=20",
                        "--iterations_per_loop=10", "--per_host_batch=8")
  assert rows == ["hosts", "1", "2"], result.stdout
  ratios = [float(line.split("|")[5]) for line in result.stdout.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
  assert all(ratio > 0 for ratio in ratios), result.stdout


def test_restore_prints_read_ratios_and_the_target_line():
  result, rows = _bench("restore", "--megabytes=4", "--repeats=1")
  assert rows[1:] == ["train", "evaluate", "verification (baseline)"], (
      result.stdout)
  assert re.search(r"worst start-up read [0-9.]+x the checkpoint; target "
                   r"<= 1.1x: (met|NOT met)", result.stdout), result.stdout


def test_resume_prints_each_mode_against_a_fresh_start_and_the_target():
  result, rows = _bench("resume", "--steps=20,50", "--repeats=1",
                        "--image_size=16")
  assert rows[1:] == ["fresh start (baseline)"] + [
      f"{mode} at {step}" for step in (20, 50)
      for mode in ("exact", "skip", "restart")], result.stdout
  assert re.search(r"exact resume at 50 steps: [0-9.]+x a fresh start; "
                   r"target <= 1.5x: (met|NOT met)", result.stdout), (
                       result.stdout)
  # Exact resumes restored a saved position: nothing fell back.
  assert "holds no input position" not in result.stderr
  assert "cannot be saved" not in result.stderr
