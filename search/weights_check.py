"""A weights file a space names, loaded into the backbone it is drawn with before anything
starts: a file of another backbone's weights (MobileNetV2's named for VGG16) failed every
trial that drew it, as it was built, after the data was decoded and Ray started."""

from __future__ import annotations

import re
import warnings

from search.console import first_line, silenced
from search.space import Space, SpaceError
from search.space.space import weights_files
from trainables.config import KEYS

# a backbone's weights are the same at every input size: built at the smallest all accept
CHECK_SIZE = 32


def check_weights_files(space: Space) -> None:
    """A `SpaceError` naming the key path if a weights file of the space does not load into
    a backbone it can be drawn with (the baselines lie in the space, so theirs are among
    them). Each pair is built once, with Keras, and only where a file is named; the loader
    allows a file with one backbone only."""
    files, backbones = weights_files(space.params)
    for backbone in backbones:
        for weights in files:
            problem = _load_problem(backbone, weights)
            if problem:
                raise SpaceError(f"{space.source}: {KEYS['backbone_weights'].section}."
                                 f"backbone_weights: {weights} does not hold {backbone}'s "
                                 f"weights: {problem}")


def _load_problem(backbone: str, weights: str) -> str | None:
    """Keras' reason `backbone` cannot load `weights`, in a line, or None if it loads them."""
    import keras  # here: most spaces name no weights file

    from trainables.models import BACKBONES

    try:
        # Keras warns of each layer it skips (dozens) before it raises, TensorFlow of a
        # missing GPU driver at its first op
        with silenced(told=(ValueError, OSError)), warnings.catch_warnings(action="ignore"):
            BACKBONES[backbone][0](weights=weights, include_top=False,
                                   input_shape=(CHECK_SIZE, CHECK_SIZE, 3))
    except (ValueError, OSError) as exc:
        # "A total of 13 objects could not be loaded. Example error message for ...:
        # Layer 'block1_conv1' expected 2 variables, but received 1 variables ..."
        layer = re.search(r"Layer '[^']+' expected [^\n]+", str(exc))
        return layer.group(0).strip() if layer else first_line(exc, 200)
    finally:
        keras.backend.clear_session()
    return None
