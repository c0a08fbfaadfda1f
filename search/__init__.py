"""The search driver and CLI: spaces, sampling, Ray Tune, MLflow."""
