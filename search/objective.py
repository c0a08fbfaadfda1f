"""What a search maximises, declared once for the sampler, the scheduler and the tables."""

METRIC, MODE = "val_accuracy", "max"
