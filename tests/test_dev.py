"""scripts/dev.py: the lock digest and argument handling (no installs)."""

import shutil

from scripts import dev


def _copy_inputs(tmp_path):
  for name in dev.LOCK_INPUTS:
    shutil.copy(dev.ROOT / name, tmp_path / name)


def test_digest_changes_with_each_lock_input(tmp_path):
  _copy_inputs(tmp_path)
  base = dev.lock_digest(tmp_path)
  assert dev.lock_digest(tmp_path) == base
  for name in dev.LOCK_INPUTS:
    original = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(original + b"\n# changed\n")
    assert dev.lock_digest(tmp_path) != base, name
    (tmp_path / name).write_bytes(original)
  assert dev.lock_digest(tmp_path) == base


def test_unknown_job_is_a_usage_error(capsys):
  assert dev.main(["dev.py", "bogus"]) == 2
  assert dev.main(["dev.py"]) == 2
  err = capsys.readouterr().err
  assert "must be one of ['test', 'train'], got ['bogus']" in err


def test_venv_dir_honours_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("TPU_HARNESS_VENV", str(tmp_path / "env"))
  assert dev.venv_dir() == tmp_path / "env"


def test_lock_pins_tensorflow_and_cloud_tpu_client_together():
  pins = dict(line.split("==") for line in
              (dev.ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#"))
  assert pins["tensorflow_cpu"].startswith("2.21.")
  assert pins["cloud-tpu-client"] == "0.10"
  assert "absl-py" in pins and "pytest" in pins
