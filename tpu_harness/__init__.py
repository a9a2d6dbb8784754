"""TPUEstimator-style runner (arrives with the runner issue)."""

__all__: list[str] = []
