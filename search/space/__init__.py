"""The search space file: YAML parsed and validated once into frozen, typed objects.

Everything a search needs is in one file (see `spaces/*.yaml`). `load_space` (`load.py`) is the
only entry point; it raises `SpaceError` naming the file, the key path and the rule broken.
Code past this edge trusts a `Space` (`space.py`): its params (`params.py`), its data section
(`data.py`, read into `trainables.data.DataSpec`), its search settings (`settings.py`).
"""

from search.space.load import load_space
from search.space.params import Choice, Fixed, FloatRange, IntRange, Param, contains
from search.space.reader import MAX_SEED, SpaceError
from search.space.settings import Asha, Resources, SearchSettings, TrialResources
from search.space.space import Space, changes, describe, extreme_draw, searched_params

__all__ = ["MAX_SEED", "Asha", "Choice", "Fixed", "FloatRange", "IntRange", "Param",
           "Resources", "SearchSettings", "Space", "SpaceError", "TrialResources", "changes",
           "contains", "describe", "extreme_draw", "load_space", "searched_params"]
