"""Runnable examples, installed with the package.

`digits` (the main job: an MLP on 8x8 handwritten digits through the
runner, with the flags of Google's TPU reference models; console script
`tpu-harness-digits`) and `hooks_demo` (the hooks on a plain
MonitoredTrainingSession; `tpu-harness-hooks-demo`).
"""
