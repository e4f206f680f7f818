"""What every command's entry point shares: logging, the run dir, and user errors as exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from train.errors import ConfigError, DiskFull, PeerLost, Preempted, UserError, is_disk_full, is_peer_lost

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


def exit_2_on_config_errors(main: Callable[[], object], command: str | None = None) -> None:
    """Runs a @hydra.main function; a config Hydra cannot compose (unknown key, group option or
    value, wrong type) exits with 2 like every other user error, not Hydra's 1. Hydra has
    printed its message by then; its SystemExit carries the error as __context__.
    `--help` (or -h) prints `command`'s keys and groups, each with its help from the schema
    (train/config/reference.py), instead of Hydra's stock text."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if command is not None and {"--help", "-h"} & set(sys.argv[1:]):
        from train.config.reference import help_text

        print(help_text(command), end="")
        return
    try:
        main()
    except SystemExit as e:
        # UserError: a sweep's failed job, which Hydra reports after the sweep (see user_errors).
        if e.code == 1 and isinstance(e.__context__, (CompactHydraException, OmegaConfBaseException, UserError)):
            raise SystemExit(2) from None
        raise


def positional_as(key: str) -> None:
    """`python -m train.push DIR repo=...`: a first argument that is not an override (no `=`, not
    an option) is read as `key=DIR`, for Hydra, which takes overrides only."""
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"{key}={sys.argv[1]}"


def in_sweep() -> bool:
    """Whether this is one job of a Hydra sweep (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _handlers(logger: logging.Logger) -> Iterator[logging.Handler]:
    """The handlers a record of `logger` reaches."""
    current: logging.Logger | None = logger
    while current is not None:
        yield from current.handlers
        current = current.parent if current.propagate else None


def _on_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream is not None and stream in (
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__,
    )


def tell(level: int, message: str) -> None:
    """A message that ends the command, shown once: on stderr ("Error: ..." for errors), and in
    the log files (a job's log, which train.report reads), not a second time by the console's log."""
    handlers = list(_handlers(log))
    console = [h for h in handlers if _on_console(h)]
    if len(console) < len(handlers):  # some handler writes elsewhere (a file): it gets the record
        for h in console:
            h.addFilter(_nowhere)
        try:
            log.log(level, "%s", message)
        finally:
            for h in console:
                h.removeFilter(_nowhere)
    print(f"Error: {message}" if level >= logging.ERROR else message, file=sys.stderr, flush=True)


def _nowhere(record: logging.LogRecord) -> bool:
    return False


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError ends the program with its message and exit code 2, no traceback
    (HYDRA_FULL_ERROR=1 shows the traceback); in a sweep, it ends only its own job."""
    try:
        yield
    except Preempted as e:
        tell(logging.WARNING, str(e))
        sys.exit(Preempted.exit_code)
    except DiskFull as e:
        tell(logging.ERROR, str(e))
        sys.exit(DiskFull.exit_code)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        tell(logging.ERROR, str(e))
        if in_sweep():
            # One job of a sweep: Hydra's launcher records the exception as this job's result and
            # the sweep goes on (SystemExit would end it). The basic sweeper raises it once its
            # batch has run; the Optuna sweeper tells Optuna the trial failed (conf/hpo/optuna.yaml).
            raise
        sys.exit(2)
    except Exception as e:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and is_peer_lost(e) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            message = peer_lost_message(e)
            tell(logging.ERROR, message)
            # Not sys.exit: tearing the process group down would wait on the lost peer again.
            logging.shutdown()
            os._exit(PeerLost.exit_code)
        if is_disk_full(e) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            # A write outside the checkpoints (the data cache, a tracker, eval.json) ran out of space.
            from train.engine.checkpoint import disk_full_message

            filename = getattr(e, "filename", None)
            where = str(filename) if filename else f"the run dir or the data cache ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
            try:
                message = disk_full_message(where, run_dir_from_hydra(), on_run_disk=False)
            except RuntimeError:  # no Hydra run dir (a plain call)
                message = f"No space left on the device while writing {where}. Free space and run the same command again."
            tell(logging.ERROR, message)
            sys.exit(DiskFull.exit_code)
        if in_sweep():
            log.exception("This job of the sweep failed")  # into the job's log, for train.report
        raise


def peer_lost_message(error: BaseException) -> str:
    """Which process gave up and why, the last complete checkpoint, and the command that resumes."""
    from train.engine.checkpoint import latest_checkpoint
    from train.engine.parallel import collective_timeout

    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    node = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or os.environ.get("MACHINE_RANK") or "?"
    cause = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    try:
        run_dir: Path | None = run_dir_from_hydra()
    except RuntimeError:
        run_dir = None
    latest = latest_checkpoint(run_dir / "checkpoints") if run_dir is not None and (run_dir / "checkpoints").is_dir() else None
    return (
        f"Process {rank} of {world} (node {node}) lost a peer: another process or machine of this run died or stopped "
        f"answering (no answer is waited for longer than EMBED_DIST_TIMEOUT_S={int(collective_timeout().total_seconds())} s). "
        f"The backend said: {cause[:300]}. "
        + (f"Last complete checkpoint: {latest}. " if latest is not None else "No checkpoint of this run is complete yet. ")
        + (f"Resume by launching every machine again with the same command plus hydra.run.dir={run_dir} trainer.resume=latest."
           if run_dir is not None else "Resume by launching every machine again with trainer.resume=latest.")
    )


def check_jsonl_out(out: str | None, overwrite: bool, what: str, example: str) -> Path:
    """A command's `out=` file: given, named *.jsonl, not a folder, and not an existing file unless overwrite=true."""
    if not out:
        raise ConfigError(f"out is required: the .jsonl file to write {what} to, e.g. out={example}.")
    path = Path(out).expanduser()
    if path.suffix.lower() != ".jsonl":
        # data=candidates_file tells the format from the extension.
        raise ConfigError(f"out={out}: name it *.jsonl (one JSON record a line), e.g. out={path.with_suffix('.jsonl')}.")
    if path.is_dir():
        raise ConfigError(f"out={out} is a directory; give a file path, e.g. out={path / 'mined.jsonl'}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"out={out} already exists and was left as it is: pass overwrite=true to replace it, or choose another out.")
    return path
