"""python -m train.bench --sparse-index 100000,1000000,10000000: building and searching the sparse
index of `train.evaluate` (task=sparse: `lexical`-free search, the `dense=` hybrid) at corpus size.

The corpus vectors are synthetic, drawn in the library's output format (SparseEncoder.encode_document
with convert_to_sparse_tensor: an int64 COO tensor over a 30,522-token vocabulary, `--active-dims`
weights a passage, 16 a query), so that what is measured is the index and the search, not a
model's encoding. Each size runs in a fresh process (peak RSS is its own), once for each way:

- `chunked`: `sparse_index` (16,384 passages encoded at a time into one int32 CSR matrix) and
  `sparse_search` (scores at most 2^26 query-document pairs at a time);
- `whole`: what `train.evaluate` did before, the whole corpus in one COO tensor, coalesced and
  turned into CSR (int64), and 256 queries scored at a time whatever the corpus size.

    python -m train.bench --sparse-index 100000,1000000 --active-dims 128
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

VOCABULARY = 30_522
QUERY_DIMS = 16
QUERIES = 1_000
TIMED = 50


class SyntheticSparseEncoder:
    """encode_document / encode_query of a SparseEncoder, answering a text "p<i>" or "q<i>" with the
    same random sparse vector every time (seeded by i)."""

    def __init__(self, document_dims: int) -> None:
        self.document_dims = document_dims
        self.training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def get_embedding_dimension(self) -> int:
        return VOCABULARY

    def _encode(self, texts: list[str], dims: int):
        import numpy as np
        import torch

        # A function of the text's number and the slot alone (not of how texts are batched), so both
        # ways index the same vectors: a splitmix64 hash gives each slot a token id and a weight.
        number = np.array([int(t[1:]) for t in texts], dtype=np.uint64) + (np.uint64(1 << 40) if texts and texts[0][0] == "q" else np.uint64(0))
        slots = number[:, None] * np.uint64(dims) + np.arange(dims, dtype=np.uint64)
        uniform = _hash(slots).astype(np.float64) / 2.0**64
        # Log-uniform token ids, Zipf-like as real passages reuse frequent tokens; repeats in a row are summed by coalesce.
        columns = np.minimum(np.floor(VOCABULARY**uniform) - 1, VOCABULARY - 1).astype(np.int64)
        values = (_hash(slots ^ np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(np.float32) / 2**24 + 0.01
        rows = np.repeat(np.arange(len(texts)), dims)
        indices = torch.from_numpy(np.stack([rows, columns.ravel()]))
        return torch.sparse_coo_tensor(indices, torch.from_numpy(values.ravel()), size=(len(texts), VOCABULARY))

    def encode_document(self, texts: list[str], batch_size: int = 64, convert_to_sparse_tensor: bool = True):
        return self._encode(texts, self.document_dims)

    def encode_query(self, texts: list[str], batch_size: int = 64, convert_to_sparse_tensor: bool = True):
        return self._encode(texts, QUERY_DIMS)


def _hash(x):
    """splitmix64, elementwise on a uint64 array."""
    import numpy as np

    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def search_whole(model: Any, queries: list[str], corpus: list[str], depth: int, timed: int):
    """The search before the chunked index: one COO tensor for the corpus, 256 queries a block."""
    import numpy as np
    import torch

    with torch.inference_mode():
        documents = model.encode_document(corpus, convert_to_sparse_tensor=True).coalesce().to_sparse_csr()
        seconds = []
        for text in queries[:timed]:
            start = time.perf_counter()
            torch.topk(documents @ model.encode_query([text]).to_dense()[0], k=depth)
            seconds.append(time.perf_counter() - start)
        ids = []
        for start in range(0, len(queries), 256):
            q = model.encode_query(queries[start : start + 256]).to_dense()
            ids.append(torch.topk((documents @ q.T).T, k=depth, dim=1).indices.numpy())
    return np.concatenate(ids), None, seconds


def child(argv: list[str]) -> None:
    """One measured process: `chunked|whole <passages> <active dims>`; prints a JSON line."""
    how, n, dims = argv[0], int(argv[1]), int(argv[2])
    from train.evaluation.sparse_figures import sparse_search

    corpus = [f"p{i}" for i in range(n)]
    queries = [f"q{i}" for i in range(QUERIES)]
    model = SyntheticSparseEncoder(dims)
    started = time.perf_counter()
    search = sparse_search if how == "chunked" else search_whole
    ids, _, seconds = search(model, queries, corpus, 100, TIMED)
    print(json.dumps({"passages": n, "seconds": round(time.perf_counter() - started, 2), "ms_per_query": round(1000 * sum(seconds) / len(seconds), 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "checksum": int(ids[:, 0].sum())}))


def _measure(how: str, n: int, dims: int, timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, "-m", "train.bench.sparse_index_scale", how, str(n), str(dims)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:  # a process killed for memory ends with -9 and no traceback
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'killed'}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_sparse_index_scale(sizes: list[int], dims: int, ways: list[str], timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for n in sizes:
        results[str(n)] = {}
        for how in ways:
            r = results[str(n)][how] = _measure(how, n, dims, timeout)
            figures = (r["error"] if "error" in r else
                       f"build + search {r['seconds']:>8.2f} s, {r['ms_per_query']:>8.2f} ms a query alone, peak RSS {r['peak_rss_mb']:>9.1f} MB")
            print(f"{n:>11,} passages x {dims} active dims  {how:<8} {figures}", flush=True)
        agreed = {r.get("checksum") for r in results[str(n)].values() if "error" not in r}
        if len(agreed) > 1:
            raise RuntimeError(f"{n:,} passages: the two ways ranked differently ({agreed})")
    return results


if __name__ == "__main__":
    child(sys.argv[1:])
