"""Internal: what lives in `model_dir`.

`checkpoints` (which checkpoints belong to a run, which read back, where
to resume, retention), `storage` (retries, listings that report errors)
and `lease` (one trainer per model_dir).
"""
