"""What every command's entry point shares: logging, the run dir, and user errors as exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from train.errors import DiskFull, Preempted, UserError, is_disk_full

log = logging.getLogger("train")


def setup_logging() -> None:
    # Hydra configures the root logger under @hydra.main; tests and plain calls get the same format.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    # "Loading weights" / "Writing model shards" bars at every save would bury the training bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("No Hydra run dir: pass run_dir= when calling run() outside `python -m train`.")
    return Path(HydraConfig.get().runtime.output_dir)


def exit_2_on_config_errors(main: Callable[[], object]) -> None:
    """Runs a @hydra.main function; a config Hydra cannot compose (unknown key, group option or
    value, wrong type) exits with 2 like every other user error, not Hydra's 1. Hydra has
    printed its message by then; its SystemExit carries the error as __context__."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        main()
    except SystemExit as e:
        # UserError: a sweep's failed job, which Hydra reports after the sweep (see user_errors).
        if e.code == 1 and isinstance(e.__context__, (CompactHydraException, OmegaConfBaseException, UserError)):
            raise SystemExit(2) from None
        raise


def in_sweep() -> bool:
    """Whether this is one job of a Hydra sweep (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError ends the program with its message and exit code 2, no traceback
    (HYDRA_FULL_ERROR=1 shows the traceback); in a sweep, it ends only its own job."""
    try:
        yield
    except Preempted as e:
        log.warning("%s", e)
        print(str(e), file=sys.stderr)
        sys.exit(Preempted.exit_code)
    except DiskFull as e:
        log.error("%s", e)
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(DiskFull.exit_code)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", e)
        print(f"Error: {e}", file=sys.stderr)
        if in_sweep():
            # One job of a sweep: Hydra's launcher records the exception as this job's result and
            # the sweep goes on (SystemExit would end it). The basic sweeper raises it once its
            # batch has run; the Optuna sweeper tells Optuna the trial failed (conf/hpo/optuna.yaml).
            raise
        sys.exit(2)
    except Exception as e:
        if is_disk_full(e) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            # A write outside the checkpoints (the data cache, a tracker, eval.json) ran out of space.
            where = getattr(e, "filename", None) or "a file"
            log.error("No space left on the device while writing %s (%s)", where, e)
            print(f"Error: no space left on the device while writing {where}. Checkpoints already written are complete; "
                  "free space and run the same command again (add trainer.resume=latest to continue a run).", file=sys.stderr)
            sys.exit(DiskFull.exit_code)
        if in_sweep():
            log.exception("This job of the sweep failed")  # into the job's log, for train.report
        raise
