"""The launcher configs other than two_processes.yaml, each run with CPU processes (gloo):
FSDP2 (fsdp.yaml), two machines simulated on this one (multi_node.yaml), DeepSpeed ZeRO-2
(deepspeed_zero2.yaml; only where deepspeed is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, free_port, tiny_overrides


def command(config: str, args: list[str], *launch_args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate" / config),
            *launch_args, "-m", "train", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def launch(config: str, args: list[str], *launch_args: str, **extra_env: str) -> None:
    done = subprocess.run(command(config, args, *launch_args), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env(**extra_env))
    assert done.returncode == 0, done.stderr[-4000:]


def run_args(model_dir, run_dir, *extra: str) -> list[str]:
    return tiny_overrides(model_dir, "loss=cosent", f"hydra.run.dir={run_dir}", *extra)


def weights(run_dir, name="final"):
    return load_file(str(run_dir / name / "model.safetensors"))


def kill_then_resume(config: str, args: list[str], checkpoint, *launch_args: str, **extra_env: str) -> None:
    """SIGKILL every process of a launch once `checkpoint` is complete, then resume with trainer.resume=latest."""
    proc = subprocess.Popen(command(config, args, *launch_args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env(**extra_env))
    deadline = time.time() + 300
    while not (checkpoint / "manifest.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"{checkpoint} never appeared"
        time.sleep(0.02)
    # The launcher starts its workers in sessions of their own: kill them one by one.
    parent = psutil.Process(proc.pid)
    for p in [*parent.children(recursive=True), parent]:
        p.kill()
    proc.communicate()
    assert not (checkpoint.parent.parent / "final").exists()
    launch(config, [*args, "trainer.resume=latest"], *launch_args, **extra_env)


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp")
    launch("two_processes.yaml", run_args(tiny_model_dir, run_dir))
    return run_dir


def test_fsdp_on_cpu_processes_shards_and_saves_full_weights_equal_to_ddp(tiny_model_dir, ddp_run, tmp_path):
    from sentence_transformers import SentenceTransformer

    launch("fsdp.yaml", run_args(tiny_model_dir, tmp_path), "--num_processes", "2")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_processes"] == 2
    # Really FSDP (accelerate alone would run CPU processes as DDP): the FSDP state format.
    assert (tmp_path / "checkpoints" / "step-3" / "accelerate_state" / "pytorch_model_fsdp.bin").is_file()
    start, ddp = load_file(str(tiny_model_dir / "model.safetensors")), weights(ddp_run)
    for name in ("final", "best", "checkpoints/step-3"):
        saved = weights(tmp_path, name)
        assert saved.keys() == ddp.keys()
        assert all(saved[k].dtype == torch.float32 and saved[k].shape == ddp[k].shape for k in saved), name
    final = weights(tmp_path)
    assert all(final[k].shape == start[k].shape for k in start), "full tensors, not one process's shard"
    # Weights stay fp32 in FSDP's all-gathers; bf16 only as the autocast of the training forward (as in DDP).
    # Not the attention key biases: softmax cancels them, so their gradient is rounding noise that
    # AdamW scales up to lr-sized steps, different under any other order of summation.
    compared = [k for k in ddp if not k.endswith("attention.self.key.bias")]
    assert len(compared) > 0.9 * len(ddp)
    assert all(torch.allclose(final[k], ddp[k], atol=1e-6) for k in compared)
    ddp_report = json.loads((ddp_run / "eval.json").read_text())
    assert report["dev"] == pytest.approx(ddp_report["dev"], abs=1e-6)
    assert SentenceTransformer(str(tmp_path / "final")).encode(["a sentence"]).shape == (1, 32)


def test_fsdp_sigkill_then_resume_gives_the_same_model(tiny_model_dir, tmp_path):
    extra = ("trainer.max_steps=12", "trainer.save_every=4", "trainer.eval_every=12", "data.max_train_samples=0")
    full, killed = tmp_path / "full", tmp_path / "killed"
    launch("fsdp.yaml", run_args(tiny_model_dir, full, *extra), "--num_processes", "2")
    kill_then_resume("fsdp.yaml", run_args(tiny_model_dir, killed, *extra), killed / "checkpoints" / "step-4",
                     "--num_processes", "2")
    a, b = weights(full), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_multi_node_config_as_two_machines_on_loopback(tiny_model_dir, ddp_run, tmp_path):
    port = str(free_port())
    procs = [
        subprocess.Popen(
            command("multi_node.yaml", run_args(tiny_model_dir, tmp_path), "--num_machines", "2", "--num_processes", "2",
                    "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(),
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_processes"] == 2
    a, b = weights(tmp_path), weights(ddp_run)
    assert all(torch.equal(a[k], b[k]) for k in a), "two machines of one process each = two processes on one"


def test_deepspeed_zero2_on_cpu_processes_resumes_to_the_same_model(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    extra = ("trainer.max_steps=12", "trainer.save_every=4", "trainer.eval_every=12", "data.max_train_samples=0")
    full, killed = tmp_path / "full", tmp_path / "killed"
    launch("deepspeed_zero2.yaml", run_args(tiny_model_dir, full, *extra), "--num_processes", "2", DS_ACCELERATOR="cpu")
    metrics = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 12 and metrics[-1]["lr"] == 0.0, "the schedule ends at the last step"
    kill_then_resume("deepspeed_zero2.yaml", run_args(tiny_model_dir, killed, *extra), killed / "checkpoints" / "step-4",
                     "--num_processes", "2", DS_ACCELERATOR="cpu")
    a, b = weights(full), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero2.yaml"])
def test_divergence_stops_with_the_last_good_checkpoint(tiny_model_dir, tmp_path, config):
    # lr 1e30: the first update blows the weights up, and a later loss is not finite.
    extra_env = {}
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
        extra_env["DS_ACCELERATOR"] = "cpu"
    args = run_args(tiny_model_dir, tmp_path, "trainer.lr=1e30", "trainer.warmup_ratio=0", "trainer.save_every=1")
    done = subprocess.run(command(config, args, "--num_processes", "2"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env(**extra_env))
    assert done.returncode != 0
    assert "Training diverged at step" in done.stderr and "Last good checkpoint:" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "final").exists() and not (tmp_path / "eval.json").exists()


def memory_per_rank(config: str, model_dir, tmp_path, name: str, *launch_args: str) -> list[dict]:
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate" / config), *launch_args,
         str(ROOT / "tests" / "probes" / "memory.py"), str(out), str(tmp_path / f"{name}-run"),
         *tiny_overrides(model_dir, "trainer.max_steps=2", "trainer.eval_every=1000", "trainer.save_every=1000")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((tmp_path / f"{name}-{rank}.json").read_text()) for rank in range(2)]


def test_fsdp_holds_half_the_parameters_and_optimizer_state_of_ddp_on_each_of_two_ranks(tiny_model_dir, tmp_path):
    """Parameter and AdamW memory per rank falls with the number of ranks under FSDP (each holds
    its shard); DDP holds everything on every rank. The main process's saving copy is on the CPU."""
    ddp = memory_per_rank("two_processes.yaml", tiny_model_dir, tmp_path, "ddp")
    fsdp = memory_per_rank("fsdp.yaml", tiny_model_dir, tmp_path, "fsdp", "--num_processes", "2")
    for rank in range(2):
        assert fsdp[rank]["parameter_bytes"] <= 0.6 * ddp[rank]["parameter_bytes"], (fsdp, ddp)
        assert fsdp[rank]["optimizer_bytes"] <= 0.6 * ddp[rank]["optimizer_bytes"], (fsdp, ddp)
    assert fsdp[0]["saving_copy_device"] == "cpu" and fsdp[1]["saving_copy_device"] is None
    assert ddp[0]["saving_copy_device"] is None
