"""Internal: the host side of the infeed.

`protocol.Infeed` (what the loops and the runner see of an infeed) and
`protocol.InfeedHook` (its start and stop with each session),
`host.HostInfeed` (one host's queue, iterator and host thread; its layout
in `layout`, its graph ops in `ops`), `pod.PodInfeed` (a pod's hosts as
one), `position` (the training input's position saved with checkpoints;
per host in `host_position`, its start decided by `resume_policy`) and
`rewrite` (the training input made resumable from a small position).
"""
