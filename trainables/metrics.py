"""What a trial reports each epoch, named once for the trainer and for what reads its results
(the tables, MLflow): Keras-free, so reading results imports no TensorFlow."""

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# the report key (and MLflow tag) saying what a trial trained on, and its two values
TRAINED_ON, ON_FEATURES, ON_PIXELS = "trained_on", "features", "pixels"
