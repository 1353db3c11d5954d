"""`tune`'s side of Optuna: the search space read from the settings' declarations and the study
that holds the trials (the trials themselves are train steps: pipeline/orchestration/tuning.py)."""
