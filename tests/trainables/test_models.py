"""Model building (every report baseline, pinned parameter counts) and the training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.space import load_space
from trainables.config import TrialConfig
from trainables.images import Arrays
from trainables.models import build_model, feature_map_size
from trainables.train import TrialData, TrialFailed, train

SPACES = Path(__file__).parents[2] / "spaces"
# Parameter counts of the reports' models as this builder makes them (weights=None).
EXPECTED = {
    ("cats_dogs", "report1_model1"): 813_217,
    ("cats_dogs", "report1_model2"): 831_585,
    ("cats_dogs", "report1_model4"): 185_473,
    ("cats_dogs", "report2_pytorch"): 1_035_762,
    ("rock_paper_scissors", "model1"): 5_631_267,
    ("rock_paper_scissors", "model2"): 20_164_163,
    ("rock_paper_scissors", "model3"): 20_165_219,
    ("blood_cells", "model_a"): 504_228,
    ("blood_cells", "model_b"): 606_596,
    ("blood_cells", "vgg16_frozen"): 16_813_124,
    ("gemstones", "model1"): 21_140_042,
    ("gemstones", "model2"): 21_171_658,
    ("digits", "small_cnn"): 66_410,
}


@pytest.mark.parametrize("space_name, baseline", sorted(EXPECTED))
def test_report_baselines_build_with_stable_parameter_counts(space_name: str,
                                                             baseline: str) -> None:
    space = load_space(SPACES / f"{space_name}.yaml")
    config = space.baselines[baseline].replace(backbone_weights="none")
    model = build_model(config, len(space.data.classes), space.data.channels)
    assert model.count_params() == EXPECTED[(space_name, baseline)]


def test_report1_model2_layers_exactly() -> None:
    config = load_space(SPACES / "cats_dogs.yaml").baselines["report1_model2"]
    model = build_model(config, 2, 3)
    convs = [layer for layer in model.layers if layer.name.startswith("conv_") and
             "relu" not in layer.name]
    assert [(c.filters, c.kernel_size, c.padding) for c in convs] == \
        [(32, (3, 3), "valid"), (32, (3, 3), "valid"), (64, (3, 3), "valid")]
    assert model.output_shape == (None, 1) and model.input_shape == (None, 128, 128, 3)


def test_frozen_and_fine_tuned_backbone() -> None:
    space = load_space(SPACES / "blood_cells.yaml")
    frozen = build_model(space.baselines["vgg16_frozen"].replace(backbone_weights="none"), 4, 3)
    tuned = build_model(space.baselines["vgg16_finetune"].replace(backbone_weights="none"), 4, 3)
    n_frozen = sum(int(np.prod(w.shape)) for w in frozen.trainable_weights)
    n_tuned = sum(int(np.prod(w.shape)) for w in tuned.trainable_weights)
    # block5: three 3x3x512x512 convs with biases become trainable
    assert n_tuned - n_frozen == 3 * (3 * 3 * 512 * 512 + 512)


def test_stack_too_deep_for_image_is_a_clear_error() -> None:
    config = TrialConfig(image_size=16, conv_blocks=4, conv_filters=(8,) * 4,
                         conv_kernel_size=(3,) * 4)
    assert feature_map_size(config) < 1
    with pytest.raises(ValueError, match="too small for 4 conv blocks"):
        build_model(config, 2, 3)


def tiny_data(n: int = 48, size: int = 10, classes: int = 2) -> TrialData:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int32) % classes
    images = rng.integers(0, 50, (n, size, size, 3)).astype(np.uint8)
    images[labels == 1, 2:8, 2:8] = 220  # class 1 has a bright square
    arrays = Arrays(images, labels, ())
    return TrialData(arrays, arrays, classes)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_train_reports_every_epoch(head: str) -> None:
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), batch_size=8, head=head,
                         augment=True, rotation=10.0, zoom=0.1, horizontal_flip=True,
                         steps_per_epoch=3, validation_steps=2)
    reports = []
    train(config, tiny_data(), lambda m, model: reports.append(m), epochs=3)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert set(reports[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                               "step_s", "trace_s"}
    assert all(r["step_s"] > 0 for r in reports)
    assert reports[0]["trace_s"] > 0 and reports[1]["trace_s"] == reports[2]["trace_s"] == 0


def test_diverging_loss_fails_the_trial() -> None:
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), optimizer="sgd",
                         learning_rate=1e30, batch_size=8)
    with pytest.raises(TrialFailed, match="not finite"):
        train(config, tiny_data(), lambda m, model: None, epochs=3)
