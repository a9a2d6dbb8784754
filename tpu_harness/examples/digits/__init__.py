"""The digits classifier: `model` (data, input_fn, model_fn) and `main`
(the job's flags and modes)."""
