"""Internal: running the loops.

`training` (one training session: loops, hooks, checkpoints), `restore`
(sessions restored for evaluate and predict), `host_loop` (the host's side
of running built loops), `preemption` (SIGTERM and SIGINT), `nan_loss` and
`logs`.
"""
