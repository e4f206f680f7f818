"""Publishing a saved model to the Hugging Face Hub (python -m train.push, trainer.push_to_hub).

What goes up is the model folder as it was saved: the weights, the tokenizer, the modules, the
model card (README.md, with the run's figures) and any export variants beside them (`onnx/`,
`openvino/`, where `train.export` writes them, the layout `SentenceTransformer(repo, backend=...)`
reads). A checkpoint's training state (`accelerate_state/`: optimizer, scheduler, random states;
`trainer_state.json`) stays behind unless asked for (training_state=true). The calls are
`SentenceTransformer.push_to_hub`'s (create the repo, the branch of a revision, upload the
folder), made on the folder itself: the model is not loaded and saved again, so the card and
files are the ones the run wrote.
"""

from __future__ import annotations

import fnmatch
import logging
import shlex
from pathlib import Path

from train.errors import ConfigError

log = logging.getLogger("train")

TRAINING_STATE = ["accelerate_state/*", "trainer_state.json"]
NOT_UPLOADED = [".*", "**/.*", "__pycache__/*"]  # hidden files (locks, caches) are never part of a model


def model_folder(path: str | Path) -> Path:
    """The folder to upload: a saved model, or a run dir's final/."""
    folder = Path(path).expanduser()
    if (folder / "final" / "modules.json").is_file() or (folder / "final" / "config.json").is_file():
        folder = folder / "final"
    if not folder.is_dir():
        raise ConfigError(f"{path}: no such directory (give a saved model, a run's final/, or the run dir).")
    if not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
        raise ConfigError(f"{folder} holds no saved model (no modules.json or config.json): give a run's final/ or a saved model dir.")
    return folder


def ignore_patterns(training_state: bool) -> list[str]:
    return NOT_UPLOADED + ([] if training_state else TRAINING_STATE)


def upload_plan(folder: Path, training_state: bool = False) -> list[str]:
    """The paths (relative to `folder`) that a push uploads, sorted: upload_folder's filter, applied here
    so that a user (and a test) can see them before anything leaves the machine."""
    patterns = ignore_patterns(training_state)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"repo={repo_id!r} is not a Hub repo id (name or owner/name): {e}") from e


def check_can_push(repo_id: str) -> str:
    """Fails, naming the fix, when a push to `repo_id` could not work: the Hub switched off
    (HF_HUB_OFFLINE), no token, or a token the Hub does not accept. Returns the token."""
    import huggingface_hub
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ConfigError(f"pushing to {repo_id} needs the Hub, and HF_HUB_OFFLINE is set: unset it, or leave the push out "
                          "(trainer.push_to_hub=null) and run python -m train.push later.")
    token = huggingface_hub.get_token()
    if not token:
        raise ConfigError(f"pushing to {repo_id} needs a Hugging Face token with write access: `hf auth login`, or set HF_TOKEN.")
    try:
        HfApi(token=token).whoami()
    except Exception as e:  # offline, a proxy, a revoked token: all stop the push before any work
        raise ConfigError(f"pushing to {repo_id}: the Hub did not accept the token ({type(e).__name__}: {e}). "
                          "Check the network and `hf auth whoami`, or leave the push out and run python -m train.push later.") from e
    return token


def push_folder(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, training_state: bool = False, token: str | None = None) -> str:
    """Uploads `folder` to `repo_id` (created if missing; `revision`: a branch, created if missing);
    returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    log.info("Pushing %s to %s%s: %d files", folder, repo_id, f" (revision {revision})" if revision else "", len(upload_plan(folder, training_state)))
    url = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, ignore_patterns=ignore_patterns(training_state),
                            commit_message=commit_message or f"Add model from {folder}")
    return str(url)


def retry_command(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    parts = ["python", "-m", "train.push", str(folder), f"repo={repo_id}"]
    parts += ["private=true"] if private else []
    parts += [f"revision={revision}"] if revision else []
    return " ".join(shlex.quote(p) for p in parts)


def push_after_run(folder: Path, repo_id: str, private: bool) -> str | None:
    """trainer.push_to_hub: the run's final/ pushed when the run is done. A failure is logged with
    the command that retries it; the run, written already, stands."""
    try:
        url = push_folder(folder, repo_id, private)
    except Exception as e:
        log.error("The push to %s failed (%s: %s). The run is saved in %s; push it again with:\n  %s",
                  repo_id, type(e).__name__, e, folder.parent, retry_command(folder, repo_id, private))
        return None
    log.info("Pushed %s to %s", folder, url)
    return url
