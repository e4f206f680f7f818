"""Model cards: the README.md of final/ and best/ (what the model is, how it was trained, its
figures, how to load it, the data's licence).

Rendered here rather than by sentence-transformers' own template: that template takes its figures
from evaluator objects and its dataset tables from the trainer's callbacks (without them it fails
to render), and its snippet loads a Hub id placeholder after running the model. Ours come from
eval.json. The YAML front matter is huggingface_hub's `ModelCardData` (with `model-index` from
`EvalResult`s), as the library's own cards use, and the framework versions are the library's
`get_versions()`. Nothing here reaches the network.

When: best/ is written during training, before eval.json exists, so both cards are written when a
stage ends (train/run.py), best/'s with the dev figures at its step. A run that dies before its end
leaves best/ without a card until it is resumed and finishes. A multi-stage run's final/ gets a
card that names every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from train.engine import checkpoint
from train.evaluation.tables import markdown_table

CARD = "README.md"


@dataclass(frozen=True)
class DataInfo:
    pretty: str
    languages: tuple[str, ...]
    license: str | None  # the Hub's licence id; None: unknown
    licence_text: str
    source: str | None = None


_KAKAO = "https://github.com/kakaobrain/KorNLUDatasets"
KNOWN_DATA: dict[str, DataInfo] = {
    "korsts": DataInfo("KorSTS (Kakao Brain)", ("ko",), "cc-by-sa-4.0", "CC BY-SA 4.0", _KAKAO),
    "kornli": DataInfo("KorNLI (Kakao Brain)", ("ko",), "cc-by-sa-4.0", "CC BY-SA 4.0", _KAKAO),
    "kor_xnli": DataInfo("Korean XNLI (Kakao Brain, KorNLUDatasets)", ("ko",), "cc-by-sa-4.0", "CC BY-SA 4.0", _KAKAO),
    "stsb": DataInfo(
        "STS Benchmark",
        ("en",),
        "other",
        "scores CC BY-SA 4.0; the sentences keep the licences of their sources (the dataset's LICENSE.txt)",
        "http://ixa2.si.ehu.eus/stswiki",
    ),
    "fashion_mnist": DataInfo("Fashion-MNIST (Zalando)", (), "mit", "MIT", "https://github.com/zalandoresearch/fashion-mnist"),
}
UNKNOWN_LICENCE = "unknown (your own files: check their licence before publishing the model)"

TASKS = {
    "bi_encoder": ("bi-encoder (sentence embeddings)", "sentence-similarity", ["sentence-similarity", "feature-extraction"]),
    "cross_encoder": ("cross-encoder (reranker)", "text-ranking", ["cross-encoder", "reranker", "text-ranking"]),
    "image_text": ("image–text dual encoder (CLIP-style)", "sentence-similarity", ["image-text", "clip", "feature-extraction"]),
    "sparse": ("sparse encoder (SPLADE-style sparse embeddings)", "feature-extraction", ["sparse-encoder", "sparse", "splade", "feature-extraction"]),
    "multi_vector": ("multi-vector encoder (ColBERT-style late interaction)", "feature-extraction",
                     ["multi-vector-encoder", "colbert", "late-interaction", "feature-extraction"]),
}
SPLIT_LABELS = {"dev_before": "dev (before training)", "test_before": "test (before training)", "retrieval_dev": "dev (retrieval)", "retrieval_test": "test (retrieval)"}


@dataclass
class DataFacts:
    name: str  # the data config's name (korsts, sts_file, ...)
    rows: dict[str, int]  # rows of each split: train, dev, test
    eval_data: str | None = None  # a preset whose dev/test score the model (data.sts_dev)
    eval_rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # your files: split -> path
    hub_id: str | None = None


@dataclass
class MixtureFacts:
    """One dataset of a mixture run."""

    name: str
    data: DataFacts
    loss: str
    loss_class: str
    weight: float


@dataclass
class StageFacts:
    name: str
    data: str
    loss: str
    steps: int
    figures: dict[str, float]  # "dev spearman_cosine" -> value


@dataclass
class RunFacts:
    """What a card says about a run, as plain values (train/cards/facts.py makes them)."""

    task: str
    base_model: str
    loss: str  # the config's name
    loss_class: str  # sentence-transformers' (or our) class name
    data: DataFacts
    hyperparameters: dict[str, Any]
    main_metric: str
    pooling: str | None = None
    model_details: dict[str, Any] = field(default_factory=dict)  # max_seq_length, normalize, image tower, ...
    num_labels: int = 1
    stages: list[StageFacts] = field(default_factory=list)
    data_of_stages: list[str] = field(default_factory=list)  # every stage's data name (licences)
    # model.random_init: the weights were drawn at random (a speed workload), not loaded from base_model.
    random_init: dict[str, Any] = field(default_factory=dict)
    mixture: list[MixtureFacts] = field(default_factory=list)  # several datasets in one run, each with its loss
    mixture_sampling: str = ""


def data_info(name: str) -> DataInfo | None:
    return KNOWN_DATA.get(name)


def licence_of(names: list[str]) -> str | None:
    """The Hub licence id when every dataset's licence is known and the same, else None."""
    ids = {data_info(n).license if data_info(n) else None for n in names}
    return ids.pop() if len(ids) == 1 and None not in ids else None


def languages_of(names: list[str]) -> list[str]:
    return sorted({lang for n in names if data_info(n) for lang in data_info(n).languages})


def is_hub_id(name: str) -> bool:
    """A Hub model id (org/name), not a local folder: only those go into `base_model:`."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def datasets_of(facts: RunFacts) -> list[str]:
    own = [m.data.name for m in facts.mixture] or [facts.data.name]
    return list(dict.fromkeys([*facts.data_of_stages, *own, *([facts.data.eval_data] if facts.data.eval_data else [])]))


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def number(value: Any) -> str:
    """How the card writes a figure."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def figures_table(figures: dict[str, dict[str, Any]]) -> str:
    """One row a split, one column a metric; counts (n_pairs, n_images, ...) in the last column."""
    columns = [c for c in dict.fromkeys(k for m in figures.values() for k in m) if not c.startswith("n_")]
    rows = [
        [split_label(split), *(number(metrics[c]) if c in metrics else "" for c in columns),
         ", ".join(f"{v} {k[2:]}" for k, v in metrics.items() if k.startswith("n_"))]
        for split, metrics in figures.items()
    ]
    return "\n".join(markdown_table(["split", *columns, "size"], rows, numeric=[False, *(True for _ in columns), True]))


def front_matter(facts: RunFacts, figures: dict[str, dict[str, Any]], model_name: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    _, pipeline, task_tags = TASKS[facts.task]
    if facts.task == "cross_encoder" and facts.num_labels > 1:
        pipeline = "text-classification"
    names = datasets_of(facts)
    eval_name = facts.data.eval_data or facts.data.name
    info = data_info(eval_name)
    results = [
        EvalResult(
            task_type=pipeline,
            dataset_type=eval_name,
            dataset_name=info.pretty if info else eval_name,
            dataset_split=split,
            metric_type=metric,
            metric_value=value,
        )
        for split, metrics in figures.items()
        if not facts.random_init  # random weights: a speed workload, no figure is published as a result
        if not split.endswith("_before")  # the base model's figures, not this model's
        for metric, value in metrics.items()
        if not metric.startswith("n_") and isinstance(value, (int, float))
    ]
    card = ModelCardData(
        language=languages_of(names) or None,
        license=licence_of(names),
        library_name="sentence-transformers",
        pipeline_tag=pipeline,
        tags=["sentence-transformers", *task_tags, *(f"loss:{c}" for c in facts.loss_class.split(" + ")), "embed-train"],
        base_model=facts.base_model if is_hub_id(facts.base_model) and not facts.random_init else None,
        datasets=[facts.data.hub_id] if facts.data.hub_id else None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    return "---\n" + card.to_yaml() + "\n---\n"


def usage_snippet(task: str, path: str, num_labels: int = 1) -> str:
    """A sentence-transformers snippet that fits the kind of model."""
    if task == "cross_encoder":
        if num_labels > 1:
            body = (
                "from sentence_transformers import CrossEncoder\n\n"
                f"model = CrossEncoder({path!r})\n"
                'pairs = [("A man is eating food.", "A man is eating a meal."), ("A man is eating food.", "A girl is riding a horse.")]\n'
                f"logits = model.predict(pairs)  # {num_labels} scores a pair, one a class\n"
                "print(logits.argmax(axis=1))\n"
            )
        else:
            body = (
                "from sentence_transformers import CrossEncoder\n\n"
                f"model = CrossEncoder({path!r})\n"
                'query = "A man is eating food."\n'
                'documents = ["A man is eating a meal.", "A girl is riding a horse.", "A man is eating pasta."]\n'
                "scores = model.predict([(query, doc) for doc in documents])  # one relevance score a pair\n"
                "print(scores)\n"
                "for hit in model.rank(query, documents, return_documents=True):  # best first\n"
                '    print(f"{hit[\'score\']:.4f}  {hit[\'text\']}")\n'
            )
    elif task == "sparse":
        body = (
            "from sentence_transformers import SparseEncoder\n\n"
            f"model = SparseEncoder({path!r})\n"
            'queries = model.encode_query(["What is the weather like?"])\n'
            'documents = model.encode_document(["It is sunny today.", "He drove to the stadium."])\n'
            "print(model.similarity(queries, documents))  # dot products of sparse vectors\n"
            "print(model.decode(documents[0], top_k=10))  # SPLADE: the document's heaviest vocabulary tokens\n"
        )
    elif task == "multi_vector":
        body = (
            "from sentence_transformers import MultiVectorEncoder\n\n"
            f"model = MultiVectorEncoder({path!r})\n"
            'queries = model.encode_query(["What is the weather like?"])  # a vector a query token\n'
            'documents = model.encode_document(["It is sunny today.", "He drove to the stadium."])\n'
            "print(model.similarity(queries, documents))  # MaxSim: each query token's best document token, summed\n"
        )
    elif task == "image_text":
        body = (
            "from PIL import Image\n"
            "from sentence_transformers import SentenceTransformer\n\n"
            f"model = SentenceTransformer({path!r})\n"
            'image_embeddings = model.encode([Image.open("photo.jpg")])\n'
            'text_embeddings = model.encode(["a photo of a sneaker", "a photo of a bag"])\n'
            "print(model.similarity(image_embeddings, text_embeddings))  # the best caption scores highest\n"
        )
    else:
        body = (
            "from sentence_transformers import SentenceTransformer\n\n"
            f"model = SentenceTransformer({path!r})\n"
            'sentences = ["The weather is lovely today.", "It\'s so sunny outside!", "He drove to the stadium."]\n'
            "embeddings = model.encode(sentences)\n"
            "print(embeddings.shape)\n"
            "print(model.similarity(embeddings, embeddings))  # cosine similarities\n"
        )
    return "```python\n" + body + "```"


def mixture_lines(facts: RunFacts) -> list[str]:
    lines = [f"- **Training data:** a mixture of {len(facts.mixture)} datasets, each batch from one of them "
             f"(`mixture.sampling={facts.mixture_sampling}`):", "",
             "| dataset | data | loss | weight | train rows |", "| --- | --- | --- | ---: | ---: |"]
    for m in facts.mixture:
        info = data_info(m.data.name)
        what = f"`data={m.data.name}`" + (f" — {info.pretty}" if info else "") + "".join(f"; {s} file `{p}`" for s, p in m.data.files.items())
        lines.append(f"| {m.name} | {what} | `{m.loss}` ({m.loss_class}) | {m.weight:g} | {m.data.rows.get('train', 0):,} |")
    return [*lines, ""]


def data_section(facts: RunFacts) -> str:
    d = facts.data
    info = data_info(d.name)
    if facts.mixture:
        lines = mixture_lines(facts)
    else:
        lines = [f"- **Training data:** `data={d.name}`" + (f" — {info.pretty}" + (f" ({info.source})" if info.source else "") if info else "")]
        if d.hub_id:
            lines.append(f"- **Hub dataset:** `{d.hub_id}`")
        lines += [f"- **{split} file:** `{path}`" for split, path in d.files.items()]
        lines.append("- **Rows:** " + ", ".join(f"{split} {n:,}" for split, n in d.rows.items()))
    if d.eval_data:
        eval_info = data_info(d.eval_data)
        rows = ", ".join(f"{split} {n:,}" for split, n in d.eval_rows.items())
        lines.append(f"- **Evaluation data:** `{d.eval_data}`" + (f" — {eval_info.pretty}" if eval_info else "") + (f" ({rows})" if rows else ""))
    lines.append("")
    lines.append("**Licence of the data:**")
    for name in datasets_of(facts):
        known = data_info(name)
        lines.append(f"- `{name}`: " + (known.licence_text if known else UNKNOWN_LICENCE))
    licence = licence_of(datasets_of(facts))
    lines.append(
        f"\nThe front matter's `license: {licence}` is the data's (share-alike terms carry over to the model); "
        "the base model's own licence applies too."
        if licence
        else "\nNo `license` in the front matter: the data's licences are not all known and alike. "
        "Check them, and the base model's, before publishing the model."
    )
    return "\n".join(lines)


def hyperparameters_section(h: dict[str, Any]) -> str:
    return "\n".join(f"- `{k}`: {v}" for k, v in h.items())


def stages_section(stages: list[StageFacts]) -> str:
    lines = ["| stage | data | loss | steps | figures |", "| --- | --- | --- | ---: | --- |"]
    for s in stages:
        figures = ", ".join(f"{k} {number(v)}" for k, v in s.figures.items())
        lines.append(f"| {s.name} | {s.data} | {s.loss} | {s.steps} | {figures} |")
    return "\n".join(lines)


RANDOM_WEIGHTS_NOTE = (
    "None published. This model started from random weights (`model.random_init`): it is a workload "
    "for measuring speed and memory at a model size, and its figures say nothing about what a trained "
    "model of this size reaches."
)


def render_card(facts: RunFacts, figures: dict[str, dict[str, Any]], kind: str, step: int, path: str, note: str = "") -> str:
    """The whole README.md: front matter, then the sections."""
    from sentence_transformers.base.model_card import get_versions

    task_text = TASKS[facts.task][0]
    article = "an" if task_text[0] in "aeiou" else "a"
    origin = f"random {facts.random_init.get('model_type')} weights" if facts.random_init else facts.base_model
    title = f"{Path(path).name}: {article} {task_text} {'trained from' if facts.random_init else 'fine-tuned from'} {origin}"
    if facts.random_init:
        base = f"none: random weights from `model.random_init` ({facts.random_init}), `{facts.base_model}`'s tokenizer"
    else:
        base = f"`{facts.base_model}`"
    details = {
        "Task": f"{task_text} (`task={facts.task}`)",
        "Base model": base,
        **({"Pooling": f"`{facts.pooling}`"} if facts.pooling else {}),
        **{k: f"`{v}`" for k, v in facts.model_details.items()},
        "Loss": f"`{facts.loss}` ({facts.loss_class})",
        "Main dev metric": f"`{facts.main_metric}`",
        "This checkpoint": f"{kind}/, step {step}",
    }
    parts = [
        front_matter(facts, figures, Path(path).name),
        f"# {title}\n",
        "Trained with embed-train (`python -m train`).\n",
        "## Model details\n",
        "\n".join(f"- **{k}:** {v}" for k, v in details.items()) + "\n",
        "## Usage\n",
        usage_snippet(facts.task, path, facts.num_labels) + "\n",
        "## Evaluation\n",
        (RANDOM_WEIGHTS_NOTE if facts.random_init else figures_table(figures) if figures else "No dev or test data: no figures.") + "\n",
        *([note + "\n"] if note else []),
        *(["## Stages\n", "Each stage starts from the previous stage's final model.\n", stages_section(facts.stages) + "\n"] if facts.stages else []),
        "## Training data\n",
        data_section(facts) + "\n",
        "## Hyperparameters\n",
        hyperparameters_section(facts.hyperparameters) + "\n",
        "## Framework versions\n",
        "\n".join(f"- {k}: {v}" for k, v in get_versions().items()) + "\n",
    ]
    return "\n".join(parts)


def final_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The splits of eval.json (dev, test, retrieval_dev, dev_before, ...), final/'s figures."""
    return {k: v for k, v in report.items() if k not in ("best", "stages", "parameters") and isinstance(v, dict) and v}


def best_figures(history: list[dict[str, Any]], best_step: int, main_metric: str, best_metric: float) -> dict[str, dict[str, Any]]:
    """The dev figures at best/'s step, from the run's history (metrics.jsonl's lines)."""
    entry = next((h for h in history if h.get("step") == best_step and f"dev_{main_metric}" in h), None)
    dev = {k[4:]: v for k, v in entry.items() if k.startswith("dev_")} if entry else {main_metric: best_metric}
    out = {"dev": {k: v for k, v in dev.items() if not k.startswith("retrieval_")}}
    retrieval = {k.removeprefix("retrieval_"): v for k, v in dev.items() if k.startswith("retrieval_")}
    return {**out, **({"retrieval_dev": retrieval} if retrieval else {})}


def write_cards(run_dir: Path, facts: RunFacts, report: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """README.md into run_dir's final/ and best/ (main process only)."""
    final = Path(run_dir) / "final"
    if final.is_dir():
        text = render_card(facts, final_figures(report), "final", report.get("steps", 0), str(final))
        checkpoint.add_file(final, CARD, text)
    best, main = Path(run_dir) / "best", facts.main_metric
    if best.is_dir() and report.get("best"):
        step = report["best"]["step"]
        note = (
            f"Dev figures at step {step}, where `{main}` was best; test figures are computed for final/ only "
            f"(`python -m train.evaluate checkpoint={best} split=test` scores this model on test)."
        )
        text = render_card(facts, best_figures(history, step, main, report["best"][main]), "best", step, str(best), note)
        checkpoint.add_file(best, CARD, text)


def multi_stage_facts(last: RunFacts, base_model: str, results: dict[str, dict[str, Any]]) -> RunFacts:
    """The card facts of a multi-stage run's final/: the last stage's, from the first stage's base model."""
    stages = []
    for name, r in results.items():
        main = r.get("main_metric", "")
        figures = {f"{split} {main}": r[split][main] for split in ("dev", "test") if main in (r.get(split) or {})}
        stages.append(StageFacts(name, r.get("data", ""), r.get("loss", ""), r.get("steps", 0), figures))
    return replace(last, base_model=base_model, stages=stages, data_of_stages=[s.data for s in stages])


def write_stages_card(final: Path, last: RunFacts, base_model: str, results: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    """README.md of a multi-stage run's final/ (a copy of the last stage's): every stage, the run's figures."""
    facts = multi_stage_facts(last, base_model, results)
    checkpoint.add_file(final, CARD, render_card(facts, final_figures(report), "final", report.get("steps", 0), str(final)))
