"""What a search maximises, declared once for the sampler, the scheduler and the tables.

METRIC is an accuracy: higher is better. MODE says so to Ray Tune and Optuna; the tables, the
progress line and the checkpoints keep the highest, so METRIC is not meant to be swapped for
a loss.
"""

METRIC, MODE = "val_accuracy", "max"
