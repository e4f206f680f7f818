"""Retrieval data as MTEB, BEIR and MIRACL ship it, and KorQuAD (SQuAD-style JSON) converted to it.

A BEIR folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
`qrels/<split>.tsv` (header `query-id corpus-id score`). A passage is its title and text joined by a
space when it has a title (the BEIR/MTEB convention). A split is the queries its qrels name, searched
against the whole corpus; for training, each (query, relevant passage) of a qrels split is a row.

KorQuAD 1.0 (and any SQuAD v1.1 JSON) becomes the same: every paragraph a passage, every question a
query whose relevant passage is the paragraph it was asked on. It is split by article, in file
order, so no test paragraph's questions are trained on: the first 70% of the articles train, the
next 15% dev, the last 15% test (KorQuAD 1.0 dev: 98 / 21 / 21 of its 140 articles). The corpus is
every paragraph of the file, whatever the split.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from train.data.beir_corpus import cached_corpus, jsonl_records, passage  # noqa: F401 (passage: the title-joining rule, for readers)
from train.data.rows import RowSource
from train.errors import DataError

log = logging.getLogger(__name__)

QRELS_NAMES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
KORQUAD_SHARES = (0.70, 0.15, 0.15)


@dataclass
class RetrievalSplit:
    """Queries of one split against one corpus: ids to texts, and each query's relevant passages
    with their grade (> 0). What the library's InformationRetrievalEvaluator takes."""

    name: str  # where it came from, for messages: "DIR (test)"
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, dict[str, int]] = field(default_factory=dict)

    def pairs(self) -> tuple[list[str], list[str]]:
        """(anchors, positives): one row a (query, relevant passage)."""
        anchors, positives = [], []
        for qid, docs in self.relevant.items():
            for cid in docs:
                anchors.append(self.queries[qid])
                positives.append(self.corpus[cid])
        return anchors, positives

    def __len__(self) -> int:
        return len(self.relevant)


def _jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: not found ({what} of a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
    return list(jsonl_records(path))


def _texts_by_id(path: Path, what: str, with_title: bool) -> dict[str, str]:
    """id -> text of a corpus.jsonl (titles joined) or queries.jsonl; an id given twice is refused."""
    found: dict[str, str] = {}
    for line_no, record in _jsonl(path, f"the {what}s"):
        key = str(record["_id"])
        if key in found:
            raise DataError(f"{path}, line {line_no}: {what} id {key!r} appears twice; ids must be unique.")
        found[key] = passage(record.get("title"), record["text"]) if with_title else record["text"]
    return found


def read_corpus(folder: Path, cache_dir: str | Path | None = None):
    """The folder's passages (a Mapping id -> text) through the data cache: read once, memory-mapped after."""
    return cached_corpus(folder / "corpus.jsonl", cache_dir)


def read_queries(folder: Path) -> dict[str, str]:
    return _texts_by_id(folder / "queries.jsonl", "query", with_title=False)


def qrels_file(folder: Path, split: str) -> Path | None:
    for name in QRELS_NAMES[split]:
        path = folder / "qrels" / f"{name}.tsv"
        if path.is_file():
            return path
    return None


def read_qrels(path: Path, queries: dict[str, str], corpus: dict[str, str], on_bad_row: str) -> dict[str, dict[str, int]]:
    """query id -> {passage id: grade > 0}; a line naming an unknown query or passage is an error
    naming the file and line, or skipped and counted (data.on_bad_row=skip)."""
    relevant: dict[str, dict[str, int]] = {}
    skipped: Counter = Counter()
    first = None
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["query-id", "corpus-id"]:
            raise DataError(f"{path}, line 1: the header must be `query-id<TAB>corpus-id<TAB>score`, not {header!r}.")
        for line_no, line in enumerate(f, 2):
            if not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            problem = _qrels_problem(cells, queries, corpus)
            if problem and on_bad_row != "skip":
                raise DataError(f"{path}, line {line_no}: {problem} (data.on_bad_row=skip skips such lines).")
            if problem:
                skipped[problem.split(" ")[0] + " " + problem.split(" ")[1]] += 1
                first = first or f"line {line_no}: {problem}"
                continue
            qid, cid, grade = cells[0], cells[1], int(float(cells[2])) if len(cells) > 2 else 1
            if grade > 0:
                relevant.setdefault(qid, {})[cid] = grade
    if skipped:
        log.warning("%s: skipped %d bad lines (%s; first: %s)", path, sum(skipped.values()),
                    "; ".join(f"{n} × {k}" for k, n in skipped.most_common()), first)
    return relevant


def _qrels_problem(cells: list[str], queries: dict[str, str], corpus: dict[str, str]) -> str | None:
    if len(cells) < 2:
        return "needs a query id and a passage id, separated by a tab"
    if cells[0] not in queries:
        return f"query id {cells[0]!r} is not in queries.jsonl"
    if cells[1] not in corpus:
        return f"passage id {cells[1]!r} is not in corpus.jsonl"
    if len(cells) > 2:
        try:
            float(cells[2])
        except ValueError:
            return f"score {cells[2]!r} is not a number"
    return None


def read_beir(folder: str | Path, split: str, on_bad_row: str = "error", cache_dir: str | Path | None = None) -> RetrievalSplit | None:
    """One split of a BEIR folder (None: it has no qrels for that split)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.path={folder}: not a folder (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/).")
    path = qrels_file(folder, split)
    if path is None:
        return None
    corpus, queries = read_corpus(folder, cache_dir), read_queries(folder)
    relevant = read_qrels(path, queries, corpus, on_bad_row)
    return _checked(RetrievalSplit(f"{folder} ({split})", {q: queries[q] for q in relevant}, corpus, relevant), path)


def _checked(split: RetrievalSplit, where: Path | str) -> RetrievalSplit:
    if not split.relevant:
        raise DataError(f"{where}: no query has a relevant passage (a score > 0), so there is nothing to retrieve.")
    return split


def read_squad(path: str | Path, split: str) -> RetrievalSplit:
    """A SQuAD v1.1-style JSON (KorQuAD 1.0): its articles' `split` share, against every paragraph."""
    path = Path(path).expanduser()
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise DataError(f"{path}: not found (a SQuAD-style JSON such as KorQuAD_v1.0_dev.json).") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a SQuAD-style JSON with a top-level \"data\" list ({type(e).__name__}: {e}).") from None
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, int]] = {}
    chosen = set(article_split(len(articles))[split])
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            cid = f"{a}-{p}"
            corpus[cid] = paragraph["context"]
            if a not in chosen:
                continue
            for qa in paragraph.get("qas", []):
                qid = str(qa["id"])
                if qid in queries:
                    raise DataError(f"{path}: question id {qid!r} appears twice (article {a + 1}, {article.get('title')!r}).")
                queries[qid] = qa["question"]
                relevant[qid] = {cid: 1}
    return _checked(RetrievalSplit(f"{path} ({split})", queries, corpus, relevant), path)


def article_split(n: int, shares: tuple[float, float, float] = KORQUAD_SHARES) -> dict[str, range]:
    """Article indices of each split, in file order: train first, then dev, then test."""
    n_train = math.floor(n * shares[0] + 0.5)
    n_dev = math.floor(n * shares[1] + 0.5)
    return {"train": range(0, n_train), "dev": range(n_train, n_train + n_dev), "test": range(n_train + n_dev, n)}


# --- As data options ------------------------------------------------------------------------

RETRIEVAL_DATA = ("beir", "korquad")
KORQUAD_FILE = "korquad/KorQuAD_v1.0_dev.json"
KORQUAD_URL = "https://korquad.github.io/dataset/KorQuAD_v1.0_dev.json"


def retrieval_split(name: str, path: str | Path | None, split: str, on_bad_row: str = "error", cache_dir: str | Path | None = None) -> RetrievalSplit | None:
    """data=beir (`path`: the folder; its corpus through the data cache) or data=korquad (`path`: a SQuAD-style JSON)."""
    if not path:
        raise DataError(f"data={name} needs data.path=<a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv>.")
    if name == "beir":
        return read_beir(path, split, on_bad_row, cache_dir)
    return read_squad(path, split)


def retrieval_sources(name: str, path: str | Path | None, split: str, on_bad_row: str = "error", cache_dir: str | Path | None = None) -> list[RowSource] | None:
    """A split's (query, relevant passage) rows as a source the data cache reads (anchor, positive)."""
    where = Path(path).expanduser() if path else None
    if name == "beir" and where is not None and where.is_dir() and qrels_file(where, split) is None:
        return None

    def records():
        data = retrieval_split(name, path, split, on_bad_row, cache_dir)
        anchors, positives = data.pairs()
        return ((f"pair {i + 1}", {"anchor": a, "positive": b}) for i, (a, b) in enumerate(zip(anchors, positives)))

    files = [] if where is None else ([where] if where.is_file() else sorted(p for p in where.rglob("*") if p.is_file()))
    stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    settings = {"kind": "retrieval", "data": name, "split": split, "files": stamp, "shares": list(KORQUAD_SHARES)}
    return [RowSource(f"data={name} ({split})", ("anchor", "positive"), records, lambda r: (r["anchor"], r["positive"]), on_bad_row, settings)]
