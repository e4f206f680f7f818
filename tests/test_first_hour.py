"""What a new user meets in the first hour (issue 28): a setting that does not apply says so, a dict
setting works as written, train.report without matplotlib says what to install, a smoke test stays
small, and one saved folder gives one figure however train.evaluate is pointed at it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, compose_config, make_finished, tiny_overrides
from tests.test_cli import cli


@pytest.fixture(scope="module")
def tiny_finished_mean(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished sentence-transformers model (mean pooling + Normalize) on the tiny BERT, whose own
    max_seq_length (8) is shorter than the fixture sentences and than the config's 128."""
    return make_finished(tiny_model_dir, tmp_path_factory.mktemp("tiny-finished"), "mean", max_seq_length=8)


# --- 1. A pooling setting a finished model does not take -----------------------------------------


def test_a_pooling_a_finished_model_does_not_take_is_a_warning_naming_the_key_and_the_fix(tiny_finished_mean, caplog):
    from train.models.build import build_model

    cfg = compose_config(tiny_overrides(tiny_finished_mean, "pooling=cls"))
    with caplog.at_level(logging.INFO, logger="train"):
        model = build_model(cfg.model, cfg.pooling)
    assert model[1].pooling_mode == "mean"  # kept, as documented
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "pooling.mode=cls" in warnings[0] and "pooling.replace=true" in warnings[0]


def test_a_normalize_a_finished_model_does_not_take_is_a_warning_too(tiny_model_dir, tmp_path, caplog):
    from train.models.build import build_model

    unnormalized = make_finished(tiny_model_dir, tmp_path / "m", "mean", normalize=False)
    cfg = compose_config(tiny_overrides(unnormalized, "model.normalize=true"))
    with caplog.at_level(logging.INFO, logger="train"):
        model = build_model(cfg.model, cfg.pooling)
    assert len(model) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "model.normalize=true" in warnings[0] and "pooling.replace=true" in warnings[0]


def test_the_default_pooling_on_a_finished_model_is_no_warning(tiny_finished_mean, tiny_kure_dir, caplog):
    from train.models.build import build_model

    for model_dir in (tiny_finished_mean, tiny_kure_dir):  # mean (the default) and cls (not)
        cfg = compose_config(tiny_overrides(model_dir))
        with caplog.at_level(logging.INFO, logger="train"):
            build_model(cfg.model, cfg.pooling)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_sweep_over_a_pooling_the_model_does_not_take_is_refused(tiny_finished_mean, tmp_path):
    sweep = tmp_path / "sweep"
    done = cli("train", "-m", "pooling=mean,cls", *tiny_overrides(tiny_finished_mean, "trainer.max_steps=2", "trainer.eval_every=2"),
               f"hydra.sweep.dir={sweep}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "pooling.mode=cls" in done.stderr and "pooling.replace=true" in done.stderr and "Refused in a sweep" in done.stderr
    assert (sweep / "0" / "eval.json").exists() and not (sweep / "1" / "eval.json").exists()


# --- 2. A dict-valued key set as written ---------------------------------------------------------

DICT_KEYS = [
    ("model.prompts", '{query: "질문: "}', {"query": "질문: "}),
    ("data.prompts", "{sentence1: query}", {"sentence1": "query"}),
    ("model.random_init", "{model_type: bert, hidden_size: 32}", {"model_type": "bert", "hidden_size": 32}),
    ("model.image_config", "{image_size: 8}", {"image_size": 8}),
    ("data.hub_splits", "{dev: dev}", {"train": "train", "dev": "dev", "test": "test"}),  # merged into the default
]


@pytest.mark.parametrize("config_name", ["train", "evaluate", "mine", "retrieve"])
@pytest.mark.parametrize("plus", ["", "+"])
@pytest.mark.parametrize("key,value,expected", DICT_KEYS, ids=[k for k, _, _ in DICT_KEYS])
def test_a_dict_valued_key_is_set_as_written_with_or_without_plus(config_name, plus, key, value, expected):
    from omegaconf import OmegaConf

    cfg = compose_config([f"{plus}{key}={value}"], config_name)
    assert OmegaConf.to_container(OmegaConf.select(cfg, key)) == expected


def test_a_dict_key_takes_one_entry_and_a_misspelt_key_still_fails():
    from hydra.errors import ConfigCompositionException

    assert compose_config(["model=minilm", "model.prompts.query=q: "]).model.prompts == {"query": "q: "}
    with pytest.raises(ConfigCompositionException, match="model.promptz"):
        compose_config(["model.promptz={query: q}"])
    assert compose_config(["model.prompts={query: 1}"]).model.prompts.query == "1"  # still dict[str, str]


def test_the_dict_override_works_on_the_command_line(tiny_model_dir, tmp_path):
    done = cli("train", *tiny_overrides(tiny_model_dir), 'model.prompts={query: "질문: "}', "data.prompts={sentence1: query}",
               "--cfg", "job")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "query: '질문: '" in done.stdout and "sentence1: query" in done.stdout


# --- 3. train.report without matplotlib ----------------------------------------------------------


def fake_sweep(root: Path) -> Path:
    for i, figure in enumerate((0.5, 0.7)):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- trainer.lr={i + 1}e-5\n")
        (run / "eval.json").write_text(json.dumps({"main_metric": "spearman_cosine", "dev": {"spearman_cosine": figure}}))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 1.0, "dev_spearman_cosine": figure}) + "\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_report_without_matplotlib_names_the_extra_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from train.report import main as report_main

    sweep = fake_sweep(tmp_path / "sweep")
    before = listing(sweep)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    for target in (sweep, sweep / "0"):
        assert report_main([str(target)]) == 2
        err = capsys.readouterr().err
        assert "matplotlib" in err and "embed-train[report]" in err and "Traceback" not in err
    assert listing(sweep) == before


def test_report_files_are_written_atomically(tmp_path, monkeypatch):
    # A plot that fails leaves no leaderboard behind (and no temporary file).
    pytest.importorskip("matplotlib")
    from train.report import report, sweep as sweep_module

    sweep = fake_sweep(tmp_path / "sweep")
    before = listing(sweep)

    def broken(*args, **kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(sweep_module, "plot_curves", broken)
    with pytest.raises(RuntimeError):
        report(sweep)
    assert listing(sweep) == before
    monkeypatch.undo()
    written = report(sweep)
    assert {p.name for p in written} == {"leaderboard.md", "leaderboard.csv", "dev_curves.png"}
    assert not [p for p in sweep.iterdir() if p.name.startswith(".")]


def test_no_report_module_or_function_is_too_long():
    import ast

    for path in (Path(__file__).resolve().parents[1] / "train" / "report").glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name}"


# --- 4. The smoke test's size --------------------------------------------------------------------


def test_debug_default_writes_no_step_checkpoint(tiny_model_dir, tmp_path):
    from train.run import run

    overrides = [o for o in tiny_overrides(tiny_model_dir) if o != "trainer.save_every=3"]
    result = run(compose_config(overrides), run_dir=tmp_path)
    assert result["steps"] == 6
    assert (tmp_path / "final" / "model.safetensors").exists() and (tmp_path / "best").is_dir()
    assert not list((tmp_path / "checkpoints").glob("step-*")) if (tmp_path / "checkpoints").exists() else True
    model_bytes = (tmp_path / "final" / "model.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total < 3 * model_bytes  # final/ and best/; a step checkpoint alone is about 4x the weights


# --- 5. One saved folder, one figure ---------------------------------------------------------------


def evaluate(tmp_path: Path, name: str, *overrides: str) -> dict:
    from train.evaluate import evaluate_run

    cfg = compose_config([*overrides, "data=sts_file", f"data.path={FIXTURES / 'train_small.jsonl'}", "split=dev"], "evaluate")
    return evaluate_run(cfg, run_dir=tmp_path / name)["dev"]


def test_evaluate_gives_one_figure_for_one_folder_whichever_key_names_it(tiny_finished_mean, tmp_path):
    by_checkpoint = evaluate(tmp_path, "a", f"checkpoint={tiny_finished_mean}")
    by_name = evaluate(tmp_path, "b", f"model.name={tiny_finished_mean}")
    assert by_name["spearman_cosine"] == pytest.approx(by_checkpoint["spearman_cosine"], abs=1e-6)
    # A length the user sets applies both ways too.
    longer = [evaluate(tmp_path, n, f"{key}={tiny_finished_mean}", "model.max_seq_length=64")
              for n, key in (("c", "checkpoint"), ("d", "model.name"))]
    assert longer[0]["spearman_cosine"] == pytest.approx(longer[1]["spearman_cosine"], abs=1e-6)
    assert longer[0]["spearman_cosine"] != pytest.approx(by_checkpoint["spearman_cosine"], abs=1e-6)
