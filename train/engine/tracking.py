"""Experiment trackers (`trainer.report_to`): TensorBoard, MLflow, W&B and Trackio, through
accelerate's trackers.

run.py builds the trackers (`build`), hands them to the Accelerator (`log_with`) and opens them
(`opened`: the resolved config as hyperparameters); the loop logs with `accelerator.log(scalars(entry),
step)`, the same entries as metrics.jsonl; run.py logs the test figures at the last step (`log_final`).
Only the main process writes: accelerate's `init_trackers`, `log` and every tracker's
start/log/finish run on the main process only.

A resumed run continues the same curves. TensorBoard: the writer opens with
`purge_step=<resumed step> + 1`, so readers drop what a killed run wrote after its checkpoint
(a fresh run in a dir a killed run left: purge_step=0, all of it). accelerate's TensorBoard tracker
flushes after every `log`, so a SIGKILL loses no point written before the checkpoint.
MLflow: the run id is kept in the run dir (`mlflow_run_id`) and the same run goes on; MLflow cannot
delete points, so steps it already has (from the killed run, past the checkpoint) are not logged
again. A resume is exact, so those points hold the values the resumed run would have logged
(throughput aside). W&B and Trackio start a new run on resume unless their own resume settings
(`WANDB_RUN_ID` + `WANDB_RESUME=allow`) say otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, on_main_process

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
# report_to name -> the module it needs (what `pip install -e .[track]` brings for the first two)
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
MLFLOW_RUN_ID = "mlflow_run_id"


def chosen(report_to: Sequence[str]) -> list[str]:
    """The trackers named, in order, without `none` and repeats."""
    return list(dict.fromkeys(n for n in report_to if n != "none"))


def report_to_problems(report_to: Sequence[str]) -> list[str]:
    """What is wrong with a `trainer.report_to` list, in words (empty: nothing)."""
    names = list(report_to)
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        return [f"trainer.report_to={names}: unknown {', '.join(unknown)} (valid: {', '.join(TRACKERS)}, none)"]
    if "none" in names and chosen(names):
        return [f"trainer.report_to={names} (none cannot be combined with a tracker)"]
    missing = [n for n in chosen(names) if importlib.util.find_spec(MODULES[n]) is None]
    if missing:
        hint = "pip install -e .[track]" if set(missing) <= {"tensorboard", "mlflow"} else f"pip install {' '.join(missing)}"
        return [f"trainer.report_to={names}: {', '.join(missing)} is not installed ({hint})"]
    return []


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as one level of `a.b.c` keys with values every tracker takes: lists and
    dicts inside lists as JSON text, null as "null"."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is None:
            out[name] = "null"
        else:
            out[name] = json.dumps(value, default=str, ensure_ascii=False)
    return out


def _figure(name: str, value: Any) -> bool:
    # Set sizes (n_pairs, n_images, retrieval_n_queries) are no curve.
    counted = name.startswith("n_") or "_n_" in name
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not counted


def scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl entry as tracker scalars: train/loss, train/lr, train/epoch,
    train/<unit>_per_second, dev/<metric>."""
    out = {}
    for key, value in entry.items():
        name = key.removeprefix("dev_")
        if key != "step" and _figure(name, value):
            out[f"dev/{name}" if key.startswith("dev_") else f"train/{key}"] = value
    return out


def final_scalars(report: Mapping[str, Any]) -> dict[str, float]:
    """eval.json's test figures as test/<metric>."""
    return {f"test/{k}": v for k, v in (report.get("test") or {}).items() if _figure(k, v)}


class ResumableMLflow(MLflowTracker):
    """accelerate's MLflow tracker, writing to a file store in the run dir (unless
    MLFLOW_TRACKING_URI says where), that continues the run dir's MLflow run on a resume."""

    def __init__(self, experiment_name: str, run_dir: Path, run_name: str, resume: bool) -> None:
        self.run_dir = Path(run_dir)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.run_dir / MLFLOW_DIR).resolve().as_uri()
        id_file = self.run_dir / MLFLOW_RUN_ID
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        super().__init__(experiment_name=experiment_name, run_id=run_id, run_name=run_name)
        self.logged_until: dict[str, int] = {}  # metric -> the last step the run already has
        self.status = "FINISHED"

    @on_main_process
    def start(self) -> None:
        import mlflow

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.uri.startswith("file:"):
            # MLflow 3.7+ keeps its file store in maintenance mode and refuses it unless allowed; it needs
            # no database or server. MLFLOW_TRACKING_URI=sqlite:///... (full mlflow) uses a database instead.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.uri)
        resuming = self.run_id is not None
        super().start()
        self.run_id = self.active_run.info.run_id
        (self.run_dir / MLFLOW_RUN_ID).write_text(self.run_id + "\n")
        if resuming:
            client = mlflow.tracking.MlflowClient()
            for key in mlflow.get_run(self.run_id).data.metrics:
                self.logged_until[key] = max(m.step for m in client.get_metric_history(self.run_id, key))

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        # MLflow refuses to change a logged parameter: a resumed run (trainer.resume=latest) adds only new ones.
        import mlflow

        have = mlflow.get_run(self.run_id).data.params
        super().store_init_configuration({mlflow_name(k): v for k, v in values.items() if mlflow_name(k) not in have})

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        values = {mlflow_name(k): v for k, v in values.items()}
        fresh = {k: v for k, v in values.items() if step is None or step > self.logged_until.get(k, -1)}
        if fresh:
            super().log(fresh, step=step, **kwargs)

    @on_main_process
    def finish(self) -> None:
        import mlflow

        mlflow.end_run(status=self.status)


def mlflow_name(key: str) -> str:
    """MLflow allows letters, digits, `_-. :/` in names: `recall@10` becomes `recall_at_10`."""
    return key.replace("@", "_at_")


def build(
    names: Sequence[str], run_dir: Path, project: str, resumed_step: int | None
) -> list[str | GeneralTracker]:
    """The Accelerator's `log_with`: TensorBoard and MLflow as ready trackers writing into the run
    dir (resumable), W&B and Trackio by name (accelerate builds them in `opened`)."""
    run_dir = Path(run_dir)
    out: list[str | GeneralTracker] = []
    for name in chosen(names):
        if name == "tensorboard":
            # Readers drop the points a run dir already holds from this step on: after the resumed
            # checkpoint, or all of them when a run starts afresh in a dir a killed run left behind.
            purge_step = resumed_step + 1 if resumed_step is not None else 0
            out.append(TensorBoardTracker(TENSORBOARD_DIR, run_dir, purge_step=purge_step))
        elif name == "mlflow":
            out.append(ResumableMLflow(project, run_dir, run_name=run_name(run_dir), resume=resumed_step is not None))
        else:
            out.append(name)
    return out


def run_name(run_dir: Path) -> str:
    """outputs/2026-01-02/10-11-12 -> 2026-01-02/10-11-12 (a sweep's job: 10-11-12/3)."""
    return "/".join(Path(run_dir).resolve().parts[-2:])


def init_kwargs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What accelerate passes to the trackers it builds by name (`wandb.init`, `trackio.init`)."""
    name = run_name(run_dir)
    return {"wandb": {"name": name, "dir": str(run_dir)}, "trackio": {"name": name}}


@contextmanager
def opened(accelerator: Accelerator, project: str, hparams: Mapping[str, Any], run_dir: Path) -> Iterator[None]:
    """The trackers open for the block: started with the config as hyperparameters, finished on
    every way out (an error or a signal marks the MLflow run FAILED or KILLED)."""
    if not accelerator.log_with:
        yield
        return
    if accelerator.is_main_process:
        Path(run_dir).mkdir(parents=True, exist_ok=True)  # W&B writes its files there from the start
    accelerator.init_trackers(project, config=flatten(hparams), init_kwargs=init_kwargs(run_dir))
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except BaseException as e:
        from train.errors import Preempted

        status = "KILLED" if isinstance(e, (Preempted, KeyboardInterrupt)) else "FAILED"
        raise
    finally:
        end(accelerator, status)


def end(accelerator: Accelerator, status: str = "FINISHED") -> None:
    """Finishes every tracker. Not `accelerator.end_training()`: that also ends the process group,
    which a multi-stage run (and run()'s own synchronisation after training) still needs."""
    for tracker in accelerator.trackers:
        if isinstance(tracker, ResumableMLflow):
            tracker.status = status
        try:
            tracker.finish()
        except Exception as e:  # a tracker that cannot close must not hide the run's own outcome
            log.warning("Could not close the %s tracker: %s", tracker.name, e)
    accelerator.trackers.clear()


def log_final(accelerator: Accelerator, report: Mapping[str, Any], step: int) -> None:
    """The test figures of eval.json, at the last step."""
    values = final_scalars(report)
    if values:
        accelerator.log(values, step=step)
