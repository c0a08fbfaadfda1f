"""`python -m search.run SPACE.yaml`: validate a space, then dry-run it or run the search.

Bad input (a broken space file, missing or unusable data, a tracking server that does not
answer, nothing to resume) ends with one message naming the problem and exit code 2, before
any trial starts. A search in which every trial failed ends with exit code 1, naming the
commonest failure; it registers no model.

`--resume` goes on with the newest search of the space under `--storage-path`: a search whose
driver was killed finishes (finished trials are kept, unfinished ones continue from their
checkpoints); a finished one runs more trials if `--num-samples` asks for more than it ran.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from search.cli import EXIT_BAD_INPUT, STOPS, add_tracking_uri, term_as_ctrl_c
from search.cluster import ClusterError, given_address
from search.console import first_line, silenced, tensorflow_started
from search.folder import FolderError, StoppedBeforeSearch
from search.server import TrackingError
from search.space import SpaceError, load_space
from trainables.data import DataError

EXIT_STOPPED = 130  # as a shell reports a command ended by Ctrl-C
STOPPED = ("stopped: Tune's state and the trials' checkpoints are kept under {storage}/; run "
           "the same command with --resume to finish the search")


def storage_folder(text: str) -> Path:
    """`--storage-path`: a folder. A URI made a local folder named like it (`./s3:/bucket`),
    while the user looked for the search in the bucket."""
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"{text} is a URI; the search's folder is read and written as files: pass a local "
            f"folder, or on a cluster a shared one mounted on every node (/mnt/shared/...)")
    path = Path(text)
    # checked before anything is made (the tracking store, Ray): a file there was found only
    # once the search's folder was made, as "File exists", with mlflow.db already written
    try:
        below = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        is_file = not below.is_dir()
    except OSError as exc:  # a name too long, a folder above it we may not look into
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror}") from None
    if is_file:
        raise argparse.ArgumentTypeError(f"{below} is a file, not a folder: pass a folder")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("space", help="the search space YAML file (see spaces/)")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides the space)")
    p.add_argument("--max-epochs", type=int, help="ASHA's max epochs per trial (overrides)")
    p.add_argument("--seed", type=int, help="seed for sampler, data split and Keras (overrides)")
    p.add_argument("--data-root", help="folder (or gs:// URI) holding the space's data "
                   "(overrides data.root)")
    add_tracking_uri(p)
    p.add_argument("--storage-path", default="ray_results", type=storage_folder,
                   help="where Ray Tune keeps trials, checkpoints and results.parquet")
    p.add_argument("--epoch-budget", type=int,
                   help="end the search once its trials have trained this many epochs in all")
    p.add_argument("--address", help="Ray cluster address (auto, host:port or ray://...)")
    p.add_argument("--resume", action="store_true",
                   help="finish or extend the newest search of this space under --storage-path")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, report the data and baseline models, train nothing")
    return p.parse_args(argv)


# each option that overrides a key of the space file: (its key path, its argparse dest)
OVERRIDES = {"--num-samples": ("search.num_samples", "num_samples"),
             "--max-epochs": ("search.asha.max_epochs", "max_epochs"),
             "--seed": ("seed", "seed"), "--data-root": ("data.root", "data_root")}


def overrides(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """The command line's values for keys of the space file, checked with the file's rules
    by `load_space`: {key path: (option, value)}."""
    return {key: (option, getattr(args, dest)) for option, (key, dest) in OVERRIDES.items()
            if getattr(args, dest) is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_ray = searching = False
    try:
        term_as_ctrl_c()
        space = load_space(args.space, overrides(args))
        if args.dry_run:
            tensorflow_started()
            from search.dry_run import dry_run

            dry_run(space)
            return 0
        if args.epoch_budget is not None and args.epoch_budget < 1:
            raise SpaceError(f"--epoch-budget must be >= 1, got {args.epoch_budget}")
        from search.ray_start import check_fits, node_cpus, start_ray_importing

        # TensorFlow's start-up lines as it is imported, Ray's as it starts
        with silenced(told=(ClusterError,)):
            started_ray = start_ray_importing(args.address, "search.driver")
        if given_address(args.address) is None:  # this machine's Ray: nothing will be added
            check_fits(space.search.trial_resources(node_cpus()), args.space)
        from search.driver import Options, run_search
        from search.results import all_failed, commonest_failure
        from search.summary import print_cache, print_summary
        from trainables.images import DEFAULT_CACHE
        searching = True
        outcome = run_search(space, Options(args.tracking_uri, args.storage_path,
                                            args.address, args.epoch_budget, args.resume))
        print_summary(outcome, args.tracking_uri)
        print_cache(space.data.cache_dir or DEFAULT_CACHE)
        if all_failed(outcome.table):
            error, count = commonest_failure(outcome.table)
            print(f"error: every trial failed, so no model was registered; the commonest "
                  f"failure ({count} of {len(outcome.table)} trials): {error}", file=sys.stderr)
            return 1
        return 0
    except (SpaceError, DataError, TrackingError, FolderError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if started_ray:  # for nothing: data, server and resume are checked once Ray is up
            import ray

            ray.shutdown()
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP; search.tuning's SearchStopped
        ignore_stops()  # this one is being handled
        began = searching and not isinstance(exc, StoppedBeforeSearch)
        print(STOPPED.format(storage=args.storage_path) if began else
              "stopped before the search began", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as exc:
        # MLflow is imported only here: it takes a second, and every command starts here
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        # MLflow failed mid-search (its server went away, say): the search can be resumed
        print(f"error: MLflow failed mid-search: {first_line(exc)}\n"
              f"The trials' results and checkpoints are kept under {args.storage_path}/: run "
              f"the same command with --resume once MLflow answers again; it finishes the "
              f"search and writes what MLflow missed.", file=sys.stderr)
        return 1


def ignore_stops() -> None:
    """Ctrl-C, SIGTERM and SIGHUP ignored from now on, once how the command ends is decided:
    another would only cut short what is left, Ray's shutdown at exit, with the traceback of
    Ray's exit handler."""
    for stop in STOPS:
        signal.signal(stop, signal.SIG_IGN)


if __name__ == "__main__":
    code = main()
    ignore_stops()
    sys.exit(code)
