"""Two "machines" on loopback (multi_node.yaml, one CPU process each): when one dies, or stops
answering without closing its connections (a powered-off node: SIGSTOP here), the survivor stops
with the project's message (the lost peer, the last complete checkpoint, the resume command) and
exit code 76, within EMBED_DIST_TIMEOUT_S for the silent case."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROOT, free_port
from tests.test_launchers import command, env, run_args
from train.errors import PeerLost


def two_machines(model_dir, run_dir, **extra_env):
    port = str(free_port())
    args = run_args(model_dir, run_dir, "data.max_train_samples=0", "trainer.max_steps=400", "trainer.save_every=5", "trainer.eval_every=400")
    return [
        subprocess.Popen(
            command("multi_node.yaml", args, "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                    "--main_process_ip", "127.0.0.1", "--main_process_port", port),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(**extra_env),
        )
        for rank in (0, 1)
    ]


def wait_for_checkpoint(run_dir, procs, timeout=300):
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / "step-5" / "manifest.json").exists():
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.05)


def worker_of(launcher: subprocess.Popen) -> psutil.Process:
    children = [c for c in psutil.Process(launcher.pid).children(recursive=True) if "train" in " ".join(c.cmdline())]
    return children[-1]


def end(procs):
    for proc in procs:
        if proc.poll() is None:
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        proc.communicate()


@pytest.mark.parametrize("how", ["killed", "silent"])
def test_the_survivor_names_the_lost_peer_the_intact_checkpoint_and_how_to_resume(tiny_model_dir, tmp_path, how):
    procs = two_machines(tiny_model_dir, tmp_path, EMBED_DIST_TIMEOUT_S="20")
    try:
        wait_for_checkpoint(tmp_path, procs)
        victim = worker_of(procs[1])
        started = time.time()
        if how == "killed":  # the machine goes: its launcher and its worker
            for p in [victim, psutil.Process(procs[1].pid)]:
                p.kill()
        else:  # the machine stops answering but keeps its connections open
            victim.send_signal(signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=240)
        waited = time.time() - started
    finally:
        end(procs)
    assert "lost a peer" in err and "Last complete checkpoint:" in err and "trainer.resume=latest" in err, err[-3000:]
    assert f"exitcode  : {PeerLost.exit_code}" in err or f"exit code {PeerLost.exit_code}" in err or f"exitcode: {PeerLost.exit_code}" in err, err[-3000:]
    if how == "silent":
        assert 15 <= waited < 120, waited


def test_only_the_backends_signs_of_a_lost_peer_count():
    from train.errors import is_peer_lost

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:41234")
    assert is_peer_lost(gloo) and is_peer_lost(RuntimeError("... Timed out waiting 20000ms for send operation to complete"))
    try:
        raise ValueError("while reducing gradients") from gloo
    except ValueError as wrapped:
        assert is_peer_lost(wrapped)
    # A tracker's or a download's network timeout is not a lost peer.
    assert not is_peer_lost(RuntimeError("HTTPSConnectionPool: Read timed out. (read timeout=10)"))
    assert not is_peer_lost(ConnectionRefusedError("[Errno 111] Connection refused"))
