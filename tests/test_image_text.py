"""task=image_text end to end on tiny models: training lifts zero-shot accuracy, the saved model
loads bare and evaluates, a user's caption file trains; CLIP's loss (repeats masked, temperature
learned); a single CLIP-architecture model built offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FIXTURES, SHARED_DATA, compose_config, tiny_image_text_overrides
from train.losses.clip import ClipLoss

IMAGES = FIXTURES / "images"
# A ViT for Fashion-MNIST's 28×28 images: 16 patches of 7×7 pixels, one layer of width 32.
VIT_28 = "{image_size:28,patch_size:7,hidden_size:32,num_hidden_layers:1,num_attention_heads:2,intermediate_size:64}"
FASHION_EVAL = 200  # dev and test images scored before and after training


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The shared Fashion-MNIST files, decompressed into a cache of this module's own."""
    if not (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found under {SHARED_DATA} (set EMBED_DATA_DIR)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield SHARED_DATA


def fashion_overrides(model_dir, *extra):
    return tiny_image_text_overrides(
        model_dir, "data=fashion_mnist", f"data.dir={SHARED_DATA}", *extra, image_config=VIT_28
    )


@pytest.fixture(scope="module")
def fashion_run(fashion, tiny_model_dir, tmp_path_factory):
    from train.run import run

    # 640 images, 100 steps of 32 (5 epochs): ~3 s of training on 2 CPU cores.
    cfg = compose_config(fashion_overrides(
        tiny_model_dir, "data.max_train_samples=640", f"data.max_eval_samples={FASHION_EVAL}", "trainer.max_steps=100",
        "trainer.batch_size=32", "trainer.lr=2e-3", "trainer.eval_every=50", "trainer.save_every=0",
    ))
    run_dir = tmp_path_factory.mktemp("fashion-run")
    return run_dir, run(cfg, run_dir=run_dir)


def test_training_lifts_zero_shot_accuracy_on_fashion_mnist(fashion_run):
    run_dir, result = fashion_run
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["task"] == "image_text" and report["loss"] == "clip" and report["steps"] == 100
    assert report["main_metric"] == "zero_shot_accuracy"
    for split in ("dev_before", "test_before", "dev", "test"):
        assert report[split]["n_images"] == FASHION_EVAL and report[split]["n_captions"] == 10, split
        assert {"zero_shot_accuracy", "image_to_text_recall@1", "text_to_image_recall@1"} <= set(report[split]), split
    # 10 classes: an untrained model is near chance (0.1); a few seconds of training far above it
    # (0.47 on test with these settings and the fixed seed).
    before, after = report["test_before"]["zero_shot_accuracy"], report["test"]["zero_shot_accuracy"]
    assert before < 0.2 and after > 0.35 and after > before + 0.2, (before, after)
    assert report["dev"]["zero_shot_accuracy"] > report["dev_before"]["zero_shot_accuracy"] + 0.2
    # Zero-shot accuracy is image→text Recall@1 against the class captions.
    assert report["test"]["zero_shot_accuracy"] == report["test"]["image_to_text_recall@1"]
    assert report["best"]["step"] in (50, 100) and result["test"] == report["test"]


def test_saved_model_loads_bare_and_embeds_images_and_texts(fashion_run):
    from sentence_transformers import SentenceTransformer

    from train.models.saved import saved_model_kind

    final = fashion_run[0] / "final"
    assert saved_model_kind(final) == "image_text"
    model = SentenceTransformer(str(final))
    image = Image.open(IMAGES / "red" / "0.png")
    image_vec = model.encode(image)
    text_vecs = model.encode(["a photo of a Sneaker", "a photo of a Bag"])
    assert image_vec.shape == (32,) and text_vecs.shape == (2, 32)
    assert np.linalg.norm(image_vec) == pytest.approx(1, abs=1e-4)  # normalised: cosine is a dot product
    assert np.isfinite(model.similarity(image_vec, text_vecs)).all()


def test_evaluate_scores_the_saved_model_as_the_run_did(fashion_run, tmp_path):
    from train.evaluate import evaluate_run

    run_dir, result = fashion_run
    # The test split the run scored after training, again from final/ alone.
    again = evaluate_run(
        compose_config([f"checkpoint={run_dir / 'final'}", "data=fashion_mnist", f"data.dir={SHARED_DATA}",
                        f"data.max_eval_samples={FASHION_EVAL}", "split=test"], "evaluate"),
        run_dir=tmp_path / "eval",
    )
    assert again["task"] == "image_text"
    for key in ("zero_shot_accuracy", "image_to_text_recall@5", "text_to_image_recall@1"):
        assert again["test"][key] == pytest.approx(result["test"][key], abs=1e-6), key
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["test"] == again["test"]
    # A folder of the user's own class images, given as data.path.
    folder = evaluate_run(
        compose_config([f"checkpoint={run_dir / 'final'}", "data=image_folder", f"data.path={IMAGES}", "split=test"], "evaluate"),
        run_dir=tmp_path / "eval-folder",
    )
    metrics = folder["test"]
    assert metrics["n_images"] == 6 and metrics["n_captions"] == 2
    assert 0 <= metrics["zero_shot_accuracy"] <= 1 and metrics["image_to_text_recall@1"] == metrics["zero_shot_accuracy"]


def test_a_caption_file_trains_and_evaluates(tiny_model_dir, tmp_path):
    from train.models.saved import saved_model_kind
    from train.run import run

    captions = IMAGES / "captions.csv"
    cfg = compose_config(tiny_image_text_overrides(
        tiny_model_dir, "data=image_text_file", f"data.train_path={captions}", f"data.dev_path={captions}",
        "data.test_path=null", "trainer.max_steps=3", "trainer.eval_every=3", "trainer.save_every=3",
    ))
    result = run(cfg, run_dir=tmp_path)
    # Captions without classes: Recall@k is the figure (no zero-shot accuracy), 4 images and 4 captions.
    assert result["main_metric"] == "image_to_text_recall@1" and result["steps"] == 3
    assert "zero_shot_accuracy" not in result["dev"] and "test" not in result
    assert result["dev"]["n_images"] == result["dev"]["n_captions"] == 4
    assert set(result["dev"]) == set(result["dev_before"])
    assert saved_model_kind(tmp_path / "final") == "image_text"


# ---------------------------------------------------------------- the loss


def clip_loss(scale=10.0, learnable=True):
    return ClipLoss(torch.nn.Identity(), scale=scale, learnable=learnable)


def test_identical_captions_are_never_negatives():
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8), torch.randn(4, 8)
    # Every row the same caption: no row has a negative, so there is nothing to push apart.
    same = clip_loss().from_embeddings(images, texts, torch.zeros(4, dtype=torch.long))
    assert same.item() == pytest.approx(0, abs=1e-6)
    distinct = clip_loss().from_embeddings(images, texts, torch.arange(4))
    assert distinct.item() > 0.1


def test_the_temperature_is_learned_only_when_asked():
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    loss_fn = clip_loss()
    loss_fn.from_embeddings(images, texts, torch.arange(4)).backward()
    assert loss_fn.log_scale.requires_grad and loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad != 0
    assert images.grad is not None and images.grad.abs().sum() > 0
    fixed = clip_loss(learnable=False)
    assert not fixed.log_scale.requires_grad and fixed.scale == pytest.approx(10.0)
    # CLIP's cap: the inverse temperature never goes above 100.
    assert clip_loss(scale=1000.0).scale == pytest.approx(100.0)


def test_masking_hides_only_the_same_caption():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 1, 0, 1])  # rows 0 and 2 share a caption, rows 1 and 3 another
    scale = 10.0
    got = clip_loss(scale=scale).from_embeddings(images, texts, ids).item()

    def direction(queries, keys):
        total = 0.0
        for i in range(4):
            # Row i's own caption (or image) and every candidate of another caption; a row of the same caption is hidden.
            kept = [j for j in range(4) if j == i or ids[j] != ids[i]]
            logits = [scale * float(queries[i] @ keys[j]) for j in kept]
            total += math.log(sum(math.exp(x) for x in logits)) - scale * float(queries[i] @ keys[i])
        return total / 4

    expected = (direction(images, texts) + direction(texts, images)) / 2
    assert got == pytest.approx(expected, rel=1e-5)
    # Without the mask (every caption distinct) the shared caption is a negative: a different loss.
    unmasked = clip_loss(scale=scale).from_embeddings(images, texts, torch.arange(4)).item()
    assert unmasked != pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------- one CLIP-architecture model


def make_tiny_clip(out: Path) -> Path:
    """A random CLIP (2 layers of width 32 a tower, 32×32 images) with a byte-level tokenizer
    (no merges: a token a character), saved as transformers saves it."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    images = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    bos, eos = len(vocab) - 2, len(vocab) - 1
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def build_clip(name, **kw):
    from train.models.image_text import build_image_text_model as build_model

    return build_model(name=str(name), max_seq_length=32, pooling_mode="mean", normalize=True, offline_package=None,
                       attn_implementation=None, **kw)


def test_one_clip_model_embeds_images_and_texts_and_freezes_a_tower(tiny_clip_dir):
    model = build_clip(tiny_clip_dir)
    image_vecs = model.encode([Image.open(IMAGES / "red" / "0.png"), Image.open(IMAGES / "blue" / "0.png")])
    text_vecs = model.encode(["a red square", "a blue square"])
    assert image_vecs.shape == text_vecs.shape == (2, 16)  # CLIP's projection_dim: one space
    assert np.allclose(np.linalg.norm(image_vecs, axis=1), 1, atol=1e-4)
    assert all(p.requires_grad for p in model.parameters())

    frozen = build_clip(tiny_clip_dir, freeze_text=True)
    named = dict(frozen[0].named_parameters())
    text = [n for n in named if ".text_model." in f".{n}" or ".text_projection." in f".{n}"]
    vision = [n for n in named if ".vision_model." in f".{n}" or ".visual_projection." in f".{n}"]
    assert text and vision and len(text) + len(vision) + 1 == len(named)  # and CLIP's logit_scale
    assert not any(named[n].requires_grad for n in text)
    assert all(named[n].requires_grad for n in vision)


def test_cached_clip_is_clips_loss_through_gradcache(tiny_model_dir):
    """loss=cached_clip (the library's GradCache loss, both directions) gives loss=clip's value at a
    fixed temperature on a batch without repeated captions, in mini-batches smaller than the batch."""
    from train.data.images import load_image_text_splits
    from train.models.image_text import image_processor_of, text_encoder_of
    from train.losses.registry import build_loss
    from train.models.image_text import build_image_text_model as build_model
    from train.tasks.image_text import ClipStep, Collate

    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), 32, "mean", False, None, None, image_tower="scratch",
                        image_config={"image_size": 8, "patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "intermediate_size": 32}).eval()
    csv = FIXTURES / "images" / "captions.csv"
    rows = load_image_text_splits("image_text_file", ("train",), Path("."), {"train": str(csv)}, None, "image", "text",
                                  "{label}", None, "error")["train"].to_list()
    batch = Collate(image_processor_of(model), text_encoder_of(model).tokenizer, 32, {r["text"]: i for i, r in enumerate(rows)})(rows)
    clip, _ = build_loss("clip", model, task="image_text", learn_scale=False)
    cached, spec = build_loss("cached_clip", model, task="image_text", mini_batch_size=2)
    assert not spec.from_embeddings
    plain = ClipStep(cached=False).loss(model, clip, batch)
    through_cache = ClipStep(cached=True).loss(model, cached, batch)
    assert len(rows) > 2 and float(through_cache.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
