"""Model cards: final/ and best/ of a run carry a README.md with the run's real figures, a YAML
front matter that parses, the base model, the loss, a loading snippet that fits the kind of model,
and the data's licence; adding it keeps the dir's manifest right and the model loadable."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, FIXTURES, compose_config, tiny_image_text_overrides, tiny_overrides
from train.engine import checkpoint
from train.cards.model_card import DataFacts, RunFacts, render_card
from train.run import run


def number(value: float) -> str:
    """How the card writes a figure: four decimals."""
    return f"{value:.4f}"


def card_parts(model_dir: Path) -> tuple[dict, str]:
    """(the parsed YAML front matter, the Markdown body) of a model dir's README.md."""
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def table_row(body: str, split: str) -> str:
    rows = [line for line in body.splitlines() if line.startswith(f"| {split} |")]
    assert len(rows) == 1, f"no single table row for {split}"
    return rows[0]


def index_metrics(meta: dict, split: str) -> dict[str, float]:
    results = meta["model-index"][0]["results"]
    return {m["type"]: m["value"] for r in results if r["dataset"]["split"] == split for m in r["metrics"]}


@pytest.fixture(scope="module")
def bi_run(tmp_path_factory, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, f"data.test_path={FIXTURES / 'pairs.jsonl'}"))
    run_dir = tmp_path_factory.mktemp("card-run")
    with pytest.MonkeyPatch.context() as mp:
        # Cards are written offline: any connection attempt fails the run.
        mp.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network used")))
        result = run(cfg, run_dir=run_dir)
    return run_dir, result, str(tiny_model_dir)


def test_final_card_holds_the_runs_figures_base_model_loss_and_snippet(bi_run):
    run_dir, result, base = bi_run
    meta, body = card_parts(run_dir / "final")
    report = json.loads((run_dir / "eval.json").read_text())
    for split in ("dev", "test"):
        row = table_row(body, split)
        for metric, value in report[split].items():
            if not metric.startswith("n_"):
                assert f" {number(value)} " in row, (split, metric)
        assert index_metrics(meta, split) == {k: v for k, v in report[split].items() if not k.startswith("n_")}
    assert f"{report['dev']['n_pairs']} pairs" in table_row(body, "dev")
    assert f"`{base}`" in body and "`cosent` (CoSENTLoss)" in body and "`mean`" in body
    assert "loss:CoSENTLoss" in meta["tags"] and meta["library_name"] == "sentence-transformers"
    assert f"SentenceTransformer({str(run_dir / 'final')!r})" in body and "model.similarity(" in body
    assert "train 64, dev 3, test 3" in body and "`batch_size`: 8" in body and "`seed`: 42" in body
    assert "`max_steps`: 6" in body and "`lr`: 2e-05" in body and "`warmup_ratio`: 0.1" in body
    assert "unknown" in body and "license" not in meta  # user files: licence unknown
    assert "base_model" not in meta  # a local folder is no Hub id


def test_best_card_holds_the_dev_figures_at_its_step(bi_run):
    run_dir, result, base = bi_run
    meta, body = card_parts(run_dir / "best")
    step = result["best"]["step"]
    line = next(json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] == step)
    dev = {k[4:]: v for k, v in line.items() if k.startswith("dev_")}
    row = table_row(body, "dev")
    for metric, value in dev.items():
        assert f" {number(value)} " in row, metric
    assert index_metrics(meta, "dev") == dev
    assert f"best/, step {step}" in body and "test figures are computed for final/ only" in body
    assert f"`{base}`" in body and f"SentenceTransformer({str(run_dir / 'best')!r})" in body


def test_card_keeps_the_manifest_right_and_the_model_loads_bare(bi_run):
    from sentence_transformers import SentenceTransformer

    run_dir, _, _ = bi_run
    for kind in ("final", "best"):
        manifest = json.loads((run_dir / kind / "manifest.json").read_text())
        on_disk = sorted(str(p.relative_to(run_dir / kind)) for p in (run_dir / kind).rglob("*") if p.is_file())
        assert sorted([*manifest["files"], "manifest.json"]) == on_disk and manifest["kind"] == kind
    vectors = SentenceTransformer(str(run_dir / "final")).encode(["a", "b"])
    assert vectors.shape == (2, 32)


def test_add_file_replaces_a_file_and_lists_it_once(tmp_path):
    with checkpoint.atomic_dir(tmp_path / "final", {"kind": "final"}) as tmp:
        (tmp / "weights").write_text("w")
    checkpoint.add_file(tmp_path / "final", "README.md", "one")
    checkpoint.add_file(tmp_path / "final", "README.md", "two")
    manifest = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert manifest["files"] == ["README.md", "weights"] and manifest["kind"] == "final"
    assert (tmp_path / "final" / "README.md").read_text() == "two"
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["README.md", "manifest.json", "weights"]


def facts(data: str, base: str = "klue/roberta-base", **kw) -> RunFacts:
    return RunFacts(
        task="bi_encoder", base_model=base, loss="cosent", loss_class="CoSENTLoss",
        data=DataFacts(name=data, rows={"train": 5749, "dev": 1500, "test": 1379}, **kw),
        hyperparameters={"epochs": 1}, main_metric="spearman_cosine", pooling="mean",
    )


def test_known_data_gives_licence_language_and_hub_base_model(tmp_path):
    text = render_card(facts("korsts"), {"dev": {"spearman_cosine": 0.8512, "n_pairs": 1500}}, "final", 360, str(tmp_path))
    (tmp_path / "README.md").write_text(text)
    meta, body = card_parts(tmp_path)
    assert meta["license"] == "cc-by-sa-4.0" and meta["language"] == ["ko"] and meta["base_model"] == "klue/roberta-base"
    assert "KorSTS" in body and "CC BY-SA 4.0" in body and "train 5,749, dev 1,500, test 1,379" in body
    # NLI training scored on KorSTS: both licences; STS-B's is not one Hub id.
    mixed = render_card(facts("stsb", eval_data="korsts"), {}, "final", 1, str(tmp_path))
    (tmp_path / "README.md").write_text(mixed)
    meta, body = card_parts(tmp_path)
    assert "license" not in meta and meta["language"] == ["en", "ko"] and "LICENSE.txt" in body


def test_random_weights_card_publishes_no_figures(tmp_path):
    """model=roberta_base_random is a speed workload: its card claims no quality."""
    from dataclasses import replace

    random = replace(facts("korsts", base="sentence-transformers/all-MiniLM-L6-v2"), random_init={"model_type": "roberta"})
    text = render_card(random, {"dev": {"spearman_cosine": 0.8512, "n_pairs": 1500}}, "final", 360, str(tmp_path))
    (tmp_path / "README.md").write_text(text)
    meta, body = card_parts(tmp_path)
    assert "model-index" not in meta and "base_model" not in meta
    assert "0.8512" not in text and "random roberta weights" in body and "None published" in body


def test_cross_encoder_card_uses_cross_encoder(tmp_path, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", "trainer.max_steps=3"))
    result = run(cfg, run_dir=tmp_path)
    meta, body = card_parts(tmp_path / "final")
    assert f"CrossEncoder({str(tmp_path / 'final')!r})" in body and "model.rank(" in body and "SentenceTransformer" not in body
    assert f" {number(result['dev']['spearman'])} " in table_row(body, "dev")
    assert "cross-encoder" in meta["tags"] and meta["pipeline_tag"] == "text-ranking"
    assert (tmp_path / "best" / "README.md").exists()


def test_image_text_card_encodes_an_image_and_texts(tmp_path, tiny_model_dir):
    cfg = compose_config(tiny_image_text_overrides(tiny_model_dir, "trainer.max_steps=2", "trainer.eval_every=2"))
    result = run(cfg, run_dir=tmp_path)
    meta, body = card_parts(tmp_path / "final")
    assert "Image.open(" in body and "model.encode([Image.open" in body and "model.similarity(image_embeddings, text_embeddings)" in body
    for split in ("dev_before", "dev", "test"):
        label = {"dev_before": "dev (before training)"}.get(split, split)
        assert f" {number(result[split]['zero_shot_accuracy'])} " in table_row(body, label)
    assert "**image_tower:** `scratch`" in body and "**Pooling:** `mean`" in body
    assert {r["dataset"]["split"] for r in meta["model-index"][0]["results"]} == {"dev", "test"}  # not the baseline


def test_multi_stage_final_card_names_every_stage(tmp_path, tiny_model_dir):
    common = [f"model.name={tiny_model_dir}", "model.max_seq_length=64", "debug=default"]
    stages = [
        ("nli", ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "loss=mnrl", "trainer.batch_size=4"]),
        ("sts", ["data=sts_file", f"data.train_path={FIXTURES / 'train_small.jsonl'}", f"data.dev_path={FIXTURES / 'pairs.jsonl'}", "loss=cosent"]),
    ]
    # Outside `python -m train` the stages see no command line: each carries the tiny settings itself.
    quoted = ", ".join("{name: %s, overrides: [%s]}" % (n, ", ".join(f"'{o}'" for o in [*common, *o])) for n, o in stages)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*common, f"stages=[{quoted}]"])
        result = run(cfg, run_dir=tmp_path)
    meta, body = card_parts(tmp_path / "final")
    assert "## Stages" in body and "| stage-1-nli | nli_file | mnrl |" in body and "| stage-2-sts | sts_file | cosent |" in body
    assert f"`{tiny_model_dir}`" in body  # the first stage's base model, not stage 1's final/
    assert f" {number(result['dev']['spearman_cosine'])} " in table_row(body, "dev")
    manifest = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert "README.md" in manifest["files"]
    _, stage_body = card_parts(tmp_path / "stage-2-sts" / "final")
    assert str(tmp_path / "stage-1-nli" / "final") in stage_body
