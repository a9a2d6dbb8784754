"""The main job: the digits classifier trained, evaluated and checked with
the runner (`tpu_harness.examples.digits`; its flags are listed by
`--helpfull`).

    python -m scripts.digits_main --model_dir=runs/digits --mode=train_and_eval

`python3 scripts/dev.py train [FLAGS]` runs it after setting up `.venv`; the
installed package runs the same job as `tpu-harness-digits`.
"""

from tpu_harness.examples.digits import main

if __name__ == "__main__":
  main.run()
