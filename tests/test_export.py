"""train.export: a saved model to ONNX (fp32, optimized, int8 dynamic and static), loaded back with
the bare library and compared with the torch model; the card, exports.json and what a push uploads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("optimum.onnxruntime", reason='pip install -e ".[export]"')

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.cross_encoder import CrossEncoder  # noqa: E402

from train import publish  # noqa: E402
from train.backend_export import cpu_quantize_config  # noqa: E402
from train.errors import ConfigError  # noqa: E402
from train.export import export_run  # noqa: E402
from train.run import run  # noqa: E402

from tests.conftest import ROOT, compose_config, make_finished, tiny_overrides  # noqa: E402

TEXTS = ["오늘 날씨가 좋다", "a man is playing a guitar", "비가 온다", "two dogs run on the grass", "회의는 내일이다", "the cat sleeps"]


def export_cfg(folder, *overrides):
    return compose_config([f"dir={folder}", "check_samples=16", "calibration_samples=16", *overrides], config_name="export")


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A training run's final/ (manifest, card), exported in place by the tests below in turn."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run(compose_config(tiny_overrides(tiny_model_dir)), run_dir=run_dir)
    return run_dir


def test_fp32_export_loads_with_the_bare_library_and_matches_torch(finished, tmp_path):
    report = export_run(export_cfg(finished), run_dir=tmp_path)  # the run dir stands for its final/
    final = finished / "final"
    assert report["out"] == str(final) and [v["file"] for v in report["variants"]] == ["onnx/model.onnx"]
    onnx = SentenceTransformer(str(final), backend="onnx", device="cpu")
    torch_model = SentenceTransformer(str(final), device="cpu")
    assert cosines(onnx.encode(TEXTS), torch_model.encode(TEXTS)).min() > 0.9999
    assert report["variants"][0]["check"]["min_cosine"] > 0.9999 and report["variants"][0]["check"]["texts"] == 16
    card = (final / "README.md").read_text()
    assert "## Exported variants" in card and "`onnx/model.onnx`" in card and 'backend="onnx")' in card
    assert "onnx/model.onnx" in json.loads((final / "manifest.json").read_text())["files"]
    assert json.loads((tmp_path / "export.json").read_text())["variants"][0]["file"] == "onnx/model.onnx"


def test_int8_dynamic_and_o3_are_added_beside_the_model_and_uploaded_with_it(finished, tmp_path):
    final = finished / "final"
    export_run(export_cfg(final, "quantize=int8_dynamic"), run_dir=tmp_path / "q")
    export_run(export_cfg(final, "optimize=O3"), run_dir=tmp_path / "o")
    q_file = f"onnx/model_qint8_{cpu_quantize_config()}.onnx"
    manifest = json.loads((final / "exports.json").read_text())
    assert sorted(v["file"] for v in manifest["variants"]) == sorted(["onnx/model.onnx", q_file, "onnx/model_O3.onnx"])
    reference = SentenceTransformer(str(final), device="cpu").encode(TEXTS)
    for file in (q_file, "onnx/model_O3.onnx"):
        variant = SentenceTransformer(str(final), backend="onnx", device="cpu", model_kwargs={"file_name": file})
        assert cosines(variant.encode(TEXTS), reference).min() > 0.9, file
    card = (final / "README.md").read_text()
    assert card.count("## Exported variants") == 1 and f"int8, dynamic ({cpu_quantize_config()})" in card and "optimized O3" in card
    plan = publish.upload_plan(final)
    assert {"onnx/model.onnx", q_file, "onnx/model_O3.onnx", "exports.json"} <= set(plan)
    assert not any(p.startswith(".") or "/." in p for p in plan)  # no staging left behind


def test_an_existing_variant_is_kept_unless_overwrite(finished, tmp_path):
    final = finished / "final"
    if not (final / "onnx" / "model.onnx").exists():
        export_run(export_cfg(final), run_dir=tmp_path / "a")
    before = (final / "onnx" / "model.onnx").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"onnx/model.onnx exists: it is kept. Pass overwrite=true"):
        export_run(export_cfg(final), run_dir=tmp_path / "b")
    assert (final / "onnx" / "model.onnx").stat().st_mtime_ns == before
    export_run(export_cfg(final, "overwrite=true"), run_dir=tmp_path / "c")
    assert (final / "onnx" / "model.onnx").stat().st_mtime_ns != before


def test_int8_static_calibrates_on_the_data_options_train_texts(saved_models, tmp_path):
    bi = shutil.copytree(saved_models[0], tmp_path / "bi")
    report = export_run(export_cfg(bi, "quantize=int8_static", "calibration_samples=12"), run_dir=tmp_path / "run")
    static = report["variants"][-1]
    assert static["file"] == f"onnx/model_qint8_static_{cpu_quantize_config()}.onnx"
    assert static["calibration"] == {"source": "data=korsts", "samples": 12}
    model = SentenceTransformer(str(bi), backend="onnx", device="cpu", model_kwargs={"file_name": static["file"]})
    assert model.encode(TEXTS).shape == (len(TEXTS), 32)
    assert "12 calibration texts from data=korsts" in (bi / "README.md").read_text()
    assert not (Path.cwd() / "augmented_model.onnx").exists()  # the calibration graph stays in the staging dir, which is removed


def test_a_cross_encoder_exports_with_the_same_scores(saved_models, tmp_path):
    ce = shutil.copytree(saved_models[1], tmp_path / "ce")
    report = export_run(export_cfg(ce), run_dir=tmp_path / "run")
    assert report["kind"] == "cross_encoder" and report["variants"][0]["check"]["max_abs_diff"] < 1e-4
    pairs = list(zip(TEXTS[0::2], TEXTS[1::2]))
    onnx = CrossEncoder(str(ce), backend="onnx", device="cpu")
    np.testing.assert_allclose(onnx.predict(pairs), CrossEncoder(str(ce), device="cpu").predict(pairs), atol=1e-4)
    assert 'CrossEncoder("<this folder or repo>", backend="onnx")' in (ce / "README.md").read_text()


def test_klue_roberta_layout_exports(tiny_klue_dir, tmp_path):
    # A RoBERTa with one token type under a BERT tokenizer that returns token types (klue/roberta-base):
    # traced as saved, the token type the tokenizer feeds has no row in the model (an IndexError).
    folder = make_finished(tiny_klue_dir, tmp_path / "klue", "mean")
    report = export_run(export_cfg(folder), run_dir=tmp_path / "run")
    assert report["variants"][0]["check"]["min_cosine"] > 0.9999
    SentenceTransformer(str(folder), backend="onnx", device="cpu").encode(TEXTS)


def test_truncate_dim_writes_a_copy_whose_embeddings_are_truncated(saved_models, tmp_path):
    bi = shutil.copytree(saved_models[0], tmp_path / "bi")
    report = export_run(export_cfg(bi, "truncate_dim=16"), run_dir=tmp_path / "run")
    assert report["out"] == str(tmp_path / "bi-dim16") and not (bi / "onnx").exists()
    model = SentenceTransformer(str(tmp_path / "bi-dim16"), backend="onnx", device="cpu")
    assert model.encode(TEXTS).shape == (len(TEXTS), 16)
    assert SentenceTransformer(str(bi), device="cpu").encode(TEXTS).shape == (len(TEXTS), 32)  # the original is untouched
    assert "truncated to 16 dimensions" in (tmp_path / "bi-dim16" / "README.md").read_text()
    with pytest.raises(ConfigError, match="holds a model with truncate_dim=16, not 8"):
        export_run(export_cfg(bi, "truncate_dim=8", f"out={tmp_path / 'bi-dim16'}"), run_dir=tmp_path / "run2")


@pytest.mark.parametrize("overrides,message", [
    (["backend=openvino"], r"backend=openvino: .*optimum-intel.*transformers<5.6.*Use backend=onnx"),
    (["optimize=O3", "quantize=int8_dynamic"], "export them as two variants"),
    (["optimize=O9"], "optimize=O9: one of O1, O2, O3, O4"),
    (["quantize=int8_dynamic", "quantize_config=sse"], "quantize_config=sse: one of auto, arm64"),
    (["truncate_dim=0"], r"truncate_dim=0 \(must be an integer ≥ 1\)"),
])
def test_requests_that_cannot_be_exported_are_refused_before_any_work(saved_models, tmp_path, overrides, message):
    bi = shutil.copytree(saved_models[0], tmp_path / "bi")
    with pytest.raises(ConfigError, match=message):
        export_run(export_cfg(bi, *overrides), run_dir=tmp_path / "run")
    assert not (bi / "onnx").exists()


def test_out_that_holds_something_else_is_refused(saved_models, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and holds no model"):
        export_run(export_cfg(saved_models[0], f"out={tmp_path / 'busy'}"), run_dir=tmp_path / "run")


def test_the_command_line(saved_models, tmp_path):
    bi = shutil.copytree(saved_models[0], tmp_path / "bi")
    cmd = [sys.executable, "-m", "train.export", str(bi), "check_samples=8", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (bi / "onnx" / "model.onnx").is_file() and f'SentenceTransformer("{bi}", backend="onnx")' in done.stdout + done.stderr
    typo = subprocess.run(cmd[:4] + ["quantise=int8_dynamic"], cwd=ROOT, capture_output=True, text=True)
    assert typo.returncode == 2 and "quantise" in typo.stderr


def test_a_sparse_encoder_exports_and_loads_as_a_sparse_encoder(tiny_model_dir, tmp_path):
    from sentence_transformers import SparseEncoder

    from train.models.sparse import build_sparse_encoder

    folder = tmp_path / "splade"
    build_sparse_encoder(str(tiny_model_dir), 64).save(str(folder))
    report = export_run(export_cfg(folder), run_dir=tmp_path / "run")
    assert report["kind"] == "sparse" and report["variants"][0]["check"]["min_cosine"] > 0.9999
    onnx = SparseEncoder(str(folder), backend="onnx", device="cpu")
    torch_model = SparseEncoder(str(folder), device="cpu")
    dense = [m.encode(TEXTS, convert_to_sparse_tensor=False, convert_to_tensor=True).numpy() for m in (onnx, torch_model)]
    assert cosines(*dense).min() > 0.9999
    assert 'SparseEncoder("<this folder or repo>", backend="onnx")' in (folder / "README.md").read_text()
