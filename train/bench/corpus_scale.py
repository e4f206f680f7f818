"""python -m train.bench --beir-corpus 100000,1000000,10000000: reading a BEIR corpus.jsonl at size.

For each size, a synthetic corpus.jsonl (KorSTS sentences with a running number, a title each), then
three fresh processes, each reporting its wall time and peak RSS (ru_maxrss):

- `dict`: the corpus read into a Python dict of id -> text (what this project held before the data
  cache took BEIR corpora, and what the library's InformationRetrievalEvaluator holds);
- `cache, first`: `cached_corpus` into an empty cache (reading, Arrow file, id hash index);
- `cache, again`: `cached_corpus` on that cache (what every later run meets).

Each also looks up 10,000 random ids and reads every passage once as search would (a slice at a
time), so the figures include use, not only opening.

    python -m train.bench --beir-corpus 100000,1000000 --scale-dir /tmp/scale
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOOKUPS = 10_000


def synthetic_corpus(path: Path, passages: int, korsts_dir: Path) -> Path:
    """`passages` lines of corpus.jsonl built from KorSTS sentences, each made unique by its number."""
    from train.bench.scale import synthetic_pairs

    if path.exists():
        return path
    pairs = path.with_suffix(".pairs.jsonl")
    synthetic_pairs(pairs, passages, korsts_dir)
    with open(pairs, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            row = json.loads(line)
            out.write(json.dumps({"_id": f"doc{i}", "title": f"문서 {i}", "text": f"{row['anchor']} {row['positive']}"}, ensure_ascii=False) + "\n")
    pairs.unlink()
    return path


def child(argv: list[str]) -> None:
    """One measured process: `dict|cache <corpus.jsonl> <cache dir>`; prints a JSON line."""
    how, path, cache_dir = argv
    started = time.perf_counter()
    if how == "dict":
        from train.data.beir import _texts_by_id

        corpus: Any = _texts_by_id(Path(path), "passage", with_title=True)
        texts = list(corpus.values())
    else:
        from train.data.beir_corpus import cached_corpus

        corpus = cached_corpus(path, cache_dir)
        texts = corpus.texts
    opened = time.perf_counter() - started
    n = len(corpus)
    rng = random.Random(0)
    ids = [f"doc{rng.randrange(n)}" for _ in range(LOOKUPS)]
    t = time.perf_counter()
    found = sum(len(corpus[i]) for i in ids)
    lookup_us = 1e6 * (time.perf_counter() - t) / LOOKUPS
    t = time.perf_counter()
    chars = sum(len(s) for start in range(0, n, 50_000) for s in texts[start : start + 50_000])
    print(json.dumps({"passages": n, "open_seconds": round(opened, 2), "lookup_us": round(lookup_us, 2),
                      "read_all_seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "checksum": found + chars}))


def _measure(how: str, path: Path, cache_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "train.bench.corpus_scale", how, str(path), str(cache_dir)],
                          capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_seconds"] = round(time.perf_counter() - started, 2)
    return out


def run_corpus_scale(sizes: list[int], work: Path, korsts_dir: Path) -> dict[str, Any]:
    results = {}
    for n in sizes:
        path = synthetic_corpus(work / f"corpus-{n}.jsonl", n, korsts_dir)
        cache_dir = work / f"cache-{n}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        runs = {"dict": _measure("dict", path, cache_dir), "cache, first": _measure("cache", path, cache_dir),
                "cache, again": _measure("cache", path, cache_dir)}
        results[n] = {"file_mb": round(path.stat().st_size / 2**20, 1), **runs}
        for how, r in runs.items():
            print(f"{n:>10,} passages ({results[n]['file_mb']} MB) {how:<13} open {r['open_seconds']:>7.2f} s, lookup {r['lookup_us']:>6.1f} µs, "
                  f"read all {r['read_all_seconds']:>6.2f} s, peak RSS {r['peak_rss_mb']:>8.1f} MB", flush=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return results


if __name__ == "__main__":
    child(sys.argv[1:])
