"""What a trial's worker process imports: the Keras trial without the extras Keras would
import; the curve trial without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search.worker import hidden

# what a worker holds before its first trial (Ray, Tune, the trainable and its parameters
# unpickled), then its first trial's import, then the extras imported for a reason of its own
WORKER = """
import sys
import ray.tune
import search.space, trainables.data
from search.worker import KERAS_EXTRAS, hidden, run_trial
before = [m for m in ("keras", "tensorflow", *KERAS_EXTRAS) if m in sys.modules]
with hidden(KERAS_EXTRAS):
    from search import trainable
after = [m for m in KERAS_EXTRAS if m in sys.modules]
import sklearn.model_selection, matplotlib.pyplot, IPython
print(before, "keras" in sys.modules, after)
"""


def test_a_worker_imports_the_trial_without_the_extras_keras_would_import() -> None:
    done = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[] True []"


def test_hidden_packages_do_not_import_inside_the_block_and_do_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "probe_package").mkdir()
    (tmp_path / "probe_package" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hidden(("probe_package", "json")):
        with pytest.raises(ImportError):
            import probe_package  # noqa: F401
        import json  # imported before the block: untouched

        assert json.dumps([1]) == "[1]"
    import probe_package

    assert "probe_package" in sys.modules and probe_package.__name__ == "probe_package"
    del sys.modules["probe_package"]


def test_the_curve_trials_worker_imports_no_tensorflow() -> None:
    # it stands in for the Keras trial where the subject is orchestration: importing
    # TensorFlow cost each of its workers 3.5 s of CPU (23 of the 45 s of 100 curve trials)
    script = ("import sys, ray.tune, search.curve_trial; "
              "print([m for m in ('keras', 'tensorflow') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
