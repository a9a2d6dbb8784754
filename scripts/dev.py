#!/usr/bin/env python3
"""One-command set-up and entry point for developers and CI.

Usage (from the repository root, with nothing but Python 3.10-3.13 and pip)::

    python3 scripts/dev.py train [FLAGS...]   # the main job
    python3 scripts/dev.py test [PYTEST_ARGS...]  # the whole test suite

Each command first creates or updates the virtual environment `.venv` (or
`$TPU_HARNESS_VENV`) from `requirements.lock` in ONE pip command, so that
tensorflow and cloud-tpu-client are resolved together, then installs this
project into it in editable mode, and then replaces itself (exec) with the
job inside it: the job gets this process's id and its signals, so a
supervisor's SIGTERM (or Ctrl-C) reaches the trainer, which saves and exits. The
environment is rebuilt only when `requirements.lock`, `setup.cfg` or
`pyproject.toml` changed since the last install (a stamp file records their
hash), so repeated runs start at once.

This file uses the standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK_INPUTS = ("requirements.lock", "setup.cfg", "pyproject.toml")
STAMP_NAME = ".tpu-harness-lock.sha256"
SUPPORTED_PYTHON = ((3, 10), (3, 13))

# The main job: the digits classifier through the runner, on CPU emulation.
JOBS = {
    "train": ["-m", "scripts.digits_main"],
    "test": ["-m", "pytest"],
}


def lock_digest(root: pathlib.Path = ROOT) -> str:
  """Returns the sha256 over the files that define the environment."""
  digest = hashlib.sha256()
  for name in LOCK_INPUTS:
    digest.update(name.encode())
    digest.update((root / name).read_bytes())
  return digest.hexdigest()


def venv_dir(root: pathlib.Path = ROOT) -> pathlib.Path:
  return pathlib.Path(os.environ.get("TPU_HARNESS_VENV", root / ".venv"))


def venv_python(env_dir: pathlib.Path) -> pathlib.Path:
  return env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure_venv(root: pathlib.Path = ROOT) -> pathlib.Path:
  """Creates or updates the virtualenv; returns its python executable."""
  lo, hi = SUPPORTED_PYTHON
  if not lo <= sys.version_info[:2] <= hi:
    raise SystemExit(
        f"scripts/dev.py: Python {sys.version_info[0]}.{sys.version_info[1]} "
        f"is not supported; tensorflow 2.21 needs Python "
        f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}.")
  env_dir = venv_dir(root)
  python = venv_python(env_dir)
  stamp = env_dir / STAMP_NAME
  want = lock_digest(root)
  if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
    return python
  if not python.exists():
    print(f"[dev] creating virtualenv {env_dir}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
  print("[dev] installing requirements.lock (one pip command)", flush=True)
  pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
  # The lock is the whole closure, so no dependency resolution: it would
  # pull `tensorflow` (which tf-keras names) beside `tensorflow-cpu`.
  subprocess.run(
      pip + ["install", "-q", "--no-deps", "-r",
             str(root / "requirements.lock")],
      check=True)
  subprocess.run(
      pip + ["install", "-q", "--no-deps", "--no-build-isolation", "-e",
             str(root)],
      check=True)
  stamp.write_text(want + "\n")
  return python


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in JOBS:
    print(__doc__, file=sys.stderr)
    print(f"scripts/dev.py: the first argument must be one of "
          f"{sorted(JOBS)}, got {argv[1:2]}.", file=sys.stderr)
    return 2
  python = ensure_venv()
  command = [str(python)] + JOBS[argv[1]] + argv[2:]
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stdout.flush()
  sys.stderr.flush()
  os.chdir(ROOT)
  os.execve(command[0], command, env)  # Does not return.
  return 0  # Unreachable.


if __name__ == "__main__":
  sys.exit(main(sys.argv))
