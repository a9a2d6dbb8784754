"""The main job's script, run as README runs it (in a subprocess)."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from support.fake_tpu_api import FakeTpuApi

pytestmark = pytest.mark.system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags):
  result = subprocess.run([sys.executable, "-m", "scripts.digits_main",
                           *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_train_and_eval_then_predict(tmp_path):
  model_dir = str(tmp_path / "digits")
  result = _run(f"--model_dir={model_dir}", "--train_steps=600",
                "--iterations_per_loop=100", "--num_cores=2")
  out = result.stdout
  # One line per message, absl's format (TF's own handler printed each
  # INFO line a second time as INFO:tensorflow:...).
  assert "INFO:tensorflow:" not in result.stderr
  assert result.stderr.count("Graph was finalized.") == 2  # Train, eval.
  match = re.search(r"global_step=600 accuracy=([0-9.]+)", out)
  assert match and float(match.group(1)) > 0.9, out
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-600")
  assert tf.io.gfile.glob(os.path.join(model_dir, "eval", "events.*"))
  assert tf.io.gfile.exists(os.path.join(model_dir, "graph.pbtxt"))
  out = _run(f"--model_dir={model_dir}", "--mode=predict",
             "--num_cores=2").stdout
  assert "predicted=288 " in out


def test_bad_flag_value_fails_before_training(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "scripts.digits_main",
       f"--model_dir={tmp_path}", "--train_batch_size=63", "--num_cores=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert ("--train_batch_size and --eval_batch_size must be multiples of "
          "--num_cores") in result.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--train_steps=99999999999999999999"],
     "flag --train_steps=99999999999999999999: 99999999999999999999 is not "
     "an integer in the range [1, 4611686018427387904]"),
    (["--mode=predict", "--pod_hosts=127.0.0.1:1,127.0.0.1:2",
      "--num_cores=2"],
     "error: predict() on a pod of several hosts is not supported"),
])
def test_flags_the_job_cannot_run_are_one_line_errors(tmp_path, flags,
                                                      message):
  result = subprocess.run(
      [sys.executable, "-m", "scripts.digits_main",
       f"--model_dir={tmp_path}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_busy_model_dir_is_a_one_line_error(tmp_path):
  # The lease of a live trainer (this test's process) on this host.
  with open(tmp_path / ".tpu_harness_lease.json", "w") as f:
    json.dump({"token": "other", "host": socket.gethostname(),
               "pid": os.getpid(), "heartbeat": time.time() + 600}, f)
  result = subprocess.run(
      [sys.executable, "-m", "scripts.digits_main",
       f"--model_dir={tmp_path}", "--train_steps=10"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert (f"error: ModelDirBusyError: `model_dir` ({str(tmp_path)!r}) is in "
          f"use by another trainer (process {os.getpid()}") in result.stderr
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


# ----------------------------------------------------------------------------
# The Cloud TPU path, offline: a fake Cloud TPU API whose node's endpoint is a
# real TF gRPC server on loopback standing in for the TPU worker.



@pytest.fixture(scope="module")
def tpu_worker():
  config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
  server = tf.distribute.Server.create_local_server(config=config)
  return int(server.target.rsplit(":", 1)[1])


@pytest.fixture
def tpu_api():
  with FakeTpuApi() as api:
    yield api


def _script(*flags, api=None):
  env = dict(os.environ)
  if api is not None:
    env["TPU_API_DISCOVERY_URL"] = api.discovery_url
  return subprocess.run(
      [sys.executable, "-m", "scripts.digits_main", *flags], cwd=ROOT,
      capture_output=True, text=True, timeout=600, check=False, env=env)


def _tpu_flags(api, name):
  return [f"--tpu={name}", f"--tpu_zone={api.zone}",
          f"--gcp_project={api.project}", "--tpu_api_credentials=anonymous"]


def test_trains_on_the_worker_a_tpu_name_resolves_to(tmp_path, tpu_api,
                                                     tpu_worker):
  tpu_api.add_node("test-tpu", tpu_worker)
  model_dir = str(tmp_path / "remote")
  result = _script(*_tpu_flags(tpu_api, "test-tpu"), "--use_tpu=false",
                   f"--model_dir={model_dir}", "--train_steps=300",
                   "--num_cores=2", api=tpu_api)
  assert result.returncode == 0, result.stderr[-4000:]
  assert re.search(r"global_step=300 accuracy=0\.9", result.stdout), (
      result.stdout)
  assert f"on grpc://127.0.0.1:{tpu_worker}" in result.stderr
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-300")


def test_master_flag_connects_directly(tmp_path, tpu_worker):
  model_dir = str(tmp_path / "direct")
  result = _script(f"--master=grpc://127.0.0.1:{tpu_worker}",
                   f"--model_dir={model_dir}", "--train_steps=50",
                   "--mode=train")
  assert result.returncode == 0, result.stderr[-4000:]
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-50")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("case,message", [
    ("unknown", "error: TPU 'no-such-tpu' was not found in project "
     "'test-project', zone 'test-zone'"),
    ("not_ready", "error: TPU 'creating-tpu' is CREATING (health ) after "
     "waiting 0 s"),
    ("unreachable", "error: Cannot reach the TPU worker at grpc://127.0.0.1:"),
])
def test_tpu_problems_are_clear_and_write_nothing(tmp_path, tpu_api,
                                                  tpu_worker, case, message):
  name = {"unknown": "no-such-tpu", "not_ready": "creating-tpu",
          "unreachable": "dead-tpu"}[case]
  if case == "not_ready":
    tpu_api.add_node(name, tpu_worker, state="CREATING", health="")
  if case == "unreachable":
    tpu_api.add_node(name, _free_port())
  model_dir = tmp_path / "never"
  result = _script(*_tpu_flags(tpu_api, name), "--tpu_wait_secs=0",
                   f"--model_dir={model_dir}", api=tpu_api)
  assert result.returncode == 1
  assert message in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not model_dir.exists()


@pytest.mark.parametrize("flags_,message", [
    (["--use_tpu"], "--use_tpu needs --tpu or --master"),
    (["--tpu=a", "--master=grpc://h:1"], "--tpu and --master exclude"),
    (["--tpu_zone=z"], "--tpu_zone and --gcp_project need a --tpu name"),
    (["--num_cores=3"], "must be multiples of --num_cores"),
    (["--iterations_per_loop=0"], "--iterations_per_loop"),
    (["--model_dir="], "--model_dir must be a non-empty path"),
    (["--model_dir=runs/sweep[1]"], "without * ? [ or a backslash"),
    (["--data_dir=/nonexistent"],
     "--data_dir must be a directory holding digits.csv.gz"),
])
def test_invalid_flag_combinations_fail_before_any_graph(tmp_path, flags_,
                                                         message):
  model_dir = tmp_path / "never"
  result = _script(f"--model_dir={model_dir}", *flags_)  # flags_ win.
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not model_dir.exists()


def test_help_lists_the_reference_flags():
  result = _script("--helpfull")
  for flag in ("--tpu", "--tpu_zone", "--gcp_project", "--[no]use_tpu",
               "--master", "--model_dir", "--data_dir", "--iterations_per_loop",
               "--train_steps", "--train_batch_size", "--eval_batch_size",
               "--eval_steps", "--save_checkpoints_steps", "--num_cores",
               "--mode"):
    assert flag + ":" in result.stdout, flag


def test_console_script_help_lists_the_flags():
  script = os.path.join(os.path.dirname(sys.executable), "tpu-harness-digits")
  result = subprocess.run([script, "--helpshort"], capture_output=True,
                          text=True, timeout=300, check=False)
  assert "--train_steps:" in result.stdout and "--tpu:" in result.stdout, (
      result.stdout[-2000:])


@pytest.mark.parametrize("mode", ["train", "eval", "predict"])
def test_use_tpu_without_tpu_devices_is_a_one_line_error(tmp_path,
                                                         tpu_worker, mode):
  model_dir = tmp_path / "never"
  target = f"grpc://127.0.0.1:{tpu_worker}"
  result = _script(f"--master={target}", "--use_tpu", f"--mode={mode}",
                   f"--model_dir={model_dir}")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: use_tpu is set, but the session target "
                         f"({target}) has no TPU devices; it has ")
  assert "'CPU'" in last and "--use_tpu=false" in last
  assert "Traceback" not in result.stderr
  assert not model_dir.exists()


# ----------------------------------------------------------------------------
# --mode=check: would the model run on a TPU? Found out on CPU.


def test_check_mode_passes_the_digits_model_and_writes_nothing(tmp_path):
  model_dir = tmp_path / "never"
  result = _script("--mode=check", "--num_cores=2",
                   f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TPU compatibility check: passed (train, eval, predict" in (
      result.stdout)
  assert not model_dir.exists()


BROKEN = '''\
import sys
import tensorflow as tf
from tpu_harness.examples.digits import main as digits_main, model as digits
original = digits.model_fn


def broken(features, labels, mode, params):
  kept = tf.boolean_mask(features, features > 0.5)
  return original(features + tf.reduce_mean(kept), labels, mode, params)


digits.model_fn = broken
digits_main.run()
'''


def test_check_mode_names_what_a_tpu_cannot_run_and_where(tmp_path):
  program = tmp_path / "broken_digits.py"
  program.write_text(BROKEN)
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, str(program), "--mode=check",
       f"--model_dir={tmp_path / 'never'}"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, check=False, env=env)
  assert result.returncode == 1, result.stderr[-3000:]
  for mode in ("train", "eval", "infer"):
    assert (f"error: [{mode}] dynamic shape: Where ('boolean_mask/Where')"
            in result.stderr), result.stderr[-3000:]
  assert ("broken_digits.py:8 in broken: `kept = tf.boolean_mask(features, "
          "features > 0.5)`") in result.stderr
  assert "TPU compatibility check: 3 problem(s)" in result.stdout
  assert "Traceback" not in result.stderr
