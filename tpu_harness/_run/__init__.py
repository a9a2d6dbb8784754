"""Internal: running the loops.

`job` (what a Runner's calls run with), `training` (one training session:
loops, hooks, checkpoints), `evaluation` (one evaluation: its loops, its
metrics written), `prediction` (one prediction: its loops, the predictions
yielded), `restore` (sessions restored from a checkpoint), `host_loop`
(the host's side of running built loops), `preemption` (SIGTERM and
SIGINT), `nan_loss` and `logs`.
"""
