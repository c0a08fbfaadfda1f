"""Keras trial code: config, data, input pipeline, models and the training loop (no Ray)."""
