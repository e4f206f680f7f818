"""Image–text data: caption files in every format, a folder per class, Fashion-MNIST's IDX files;
bad images named by file and row, image references decoded by open_image."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, SHARED_DATA, compose_config
from train.data.fashion_mnist import FASHION_MNIST_EN, FASHION_MNIST_KO, default_cache_dir
from train.data.image_decoding import open_image
from train.data.images import check_caption_template, load_image_text_splits
from train.errors import ConfigError, DataError

IMAGES = FIXTURES / "images"
ROWS = [  # (image, caption) as written in a caption file
    ("red/0.png", "a bright red square"),
    ("blue/0.png", 'a "blue" square, bright'),
    ("red/2.png", "빨간 네모"),
]


def load(name="image_text_file", splits=("train",), paths=None, **kw):
    args = dict(
        data_dir=Path("unused"), fmt=None, image_column="image", text_column="text",
        caption_template="a photo of a {label}", class_names=None, on_bad_row="error",
    )
    args.update(kw)
    return load_image_text_splits(name, splits, paths=paths or {}, **args)


def load_file(path, **kw):
    return load(paths={"train": str(path)}, **kw)["train"]


def write_formats(folder: Path, rows: list[tuple[str, str]]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"image": image, "text": text} for image, text in rows]
    (folder / "c.csv").write_text("image,text\n" + "".join(f'{i},"{t.replace(chr(34), 2 * chr(34))}"\n' for i, t in rows))
    (folder / "c.tsv").write_text("image\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in rows))
    (folder / "c.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    (folder / "c.json").write_text(json.dumps(records, ensure_ascii=False))
    pq.write_table(pa.Table.from_pylist(records), folder / "c.parquet")
    return [folder / f"c.{ext}" for ext in ("csv", "tsv", "jsonl", "json", "parquet")]


def test_every_format_loads_the_same_refs_and_captions(tmp_path):
    shutil.copytree(IMAGES / "red", tmp_path / "red")
    shutil.copytree(IMAGES / "blue", tmp_path / "blue")
    expected_refs = [str(tmp_path / image) for image, _ in ROWS]
    for path in write_formats(tmp_path, ROWS):
        ds = load_file(path)
        assert ds.column_names == ["image", "text", "row"], path
        assert ds["image"] == expected_refs, path
        assert ds["text"] == [text for _, text in ROWS], path
        assert ds["row"] == [1, 2, 3], path


def test_relative_paths_resolve_against_the_files_folder_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = load_file(IMAGES / "captions.csv")
    assert ds["image"] == [str(IMAGES / p) for p in ("red/0.png", "blue/0.png", "red/1.png", "blue/2.png")]
    assert ds["text"][2] == "a red square, darker"
    # An absolute path is kept; '..' is resolved.
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.jsonl"
    path.write_text(json.dumps({"image": str(IMAGES / "red/0.png"), "text": "a"}) + "\n" + json.dumps({"image": "../x.png", "text": "b"}) + "\n")
    shutil.copy(IMAGES / "blue/0.png", tmp_path / "x.png")
    assert load_file(path)["image"] == [str(IMAGES / "red/0.png"), str(tmp_path / "x.png")]


def test_missing_column_names_the_file_and_its_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("file,caption\nred/0.png,a red square\n")
    with pytest.raises(DataError) as e:
        load_file(path)
    message = str(e.value)
    assert str(path) in message and "data.columns.image='image'" in message and "file, caption" in message
    shutil.copytree(IMAGES / "red", tmp_path / "red")
    assert load_file(path, image_column="file", text_column="caption")["text"] == ["a red square"]


def test_bad_row_error_names_file_row_problem_and_image():
    with pytest.raises(DataError) as e:
        load_file(IMAGES / "captions_bad.csv")
    assert f"{IMAGES / 'captions_bad.csv'}, row 2: no such image file ({IMAGES / 'red/9.png'})" in str(e.value)
    assert "data.on_bad_row=skip" in str(e.value)


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"image": str(IMAGES / "not_an_image.png"), "text": "x"}, f"not an image file ({IMAGES / 'not_an_image.png'})"),
        ({"image": str(IMAGES / "red/0.png"), "text": "  "}, "empty caption in 'text'"),
        ({"image": "", "text": "x"}, "empty image path in 'image'"),
        ({"image": str(IMAGES / "red"), "text": "x"}, "not a file"),
        ({"image": str(IMAGES / "red/0.png"), "text": 3}, "field 'text' is not text (3)"),
    ],
)
def test_each_kind_of_bad_row_is_named(tmp_path, row, problem):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"image": str(IMAGES / "blue/0.png"), "text": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_file(path)
    assert f"{path}, row 2: {problem}" in str(e.value)


def test_a_broken_png_is_a_bad_row(tmp_path):
    broken = tmp_path / "broken.png"
    png = (IMAGES / "red/0.png").read_bytes()
    at = png.find(b"IDAT") + 6
    broken.write_bytes(png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :])  # pixel data that fails its checksum
    path = tmp_path / "c.csv"
    path.write_text("image,text\nbroken.png,cut short\n")
    with pytest.raises(DataError, match=r"c.csv, row 1: broken image .*broken.png\)"):
        load_file(path)


def test_skip_policy_skips_bad_rows_and_counts_them_in_one_warning(caplog):
    ds = load_file(IMAGES / "captions_bad.csv", on_bad_row="skip")
    assert ds["row"] == [1, 4]
    assert ds["image"] == [str(IMAGES / "red/0.png"), str(IMAGES / "blue/1.png")]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "captions_bad.csv: skipped 2 bad rows of 4" in text
    assert "row 2: no such image file" in text and "row 3: not an image file" in text


def test_all_rows_bad_and_no_rows_are_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("image,text\nnope.png,x\n")
    with pytest.raises(DataError, match="all 1 rows are bad"):
        load_file(path, on_bad_row="skip")
    path.write_text("image,text\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_file(path)


def test_max_samples_keep_the_first_rows_per_split():
    path = str(IMAGES / "captions.csv")
    out = load(splits=("train", "dev", "test"), paths={"train": path, "dev": path, "test": None},
               max_train_samples=3, max_eval_samples=1)
    assert {s: d["row"] for s, d in out.items()} == {"train": [1, 2, 3], "dev": [1]}
    # With skip, N good rows: the two bad rows do not count against the limit.
    assert load_file(IMAGES / "captions_bad.csv", on_bad_row="skip", max_train_samples=2)["row"] == [1, 4]


def test_no_file_given_is_an_error():
    with pytest.raises(DataError, match="data.train_path"):
        load(paths={"train": None})


def test_image_folder_labels_from_subfolders_and_captions_from_the_template(tmp_path):
    ds = load("image_folder", paths={"train": str(IMAGES)})["train"]
    assert ds.column_names == ["image", "text", "label", "row"]
    assert ds["label"] == ["blue"] * 3 + ["red"] * 3  # not_an_image.png and the CSVs are not in a class folder
    assert ds["text"] == ["a photo of a blue"] * 3 + ["a photo of a red"] * 3
    assert ds["image"] == [str(IMAGES / c / f"{i}.png") for c in ("blue", "red") for i in range(3)]
    assert ds["row"] == list(range(1, 7))
    ko = load("image_folder", paths={"dev": str(IMAGES)}, splits=("dev",), caption_template="{label} 사진")["dev"]
    assert ko["text"][0] == "blue 사진"


def test_image_folder_skips_other_files_and_names_bad_images(tmp_path, caplog):
    shutil.copytree(IMAGES / "red", tmp_path / "Red Things")
    (tmp_path / "Red Things" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / "Red Things" / "UPPER.PNG").write_bytes((IMAGES / "red/0.png").read_bytes())
    (tmp_path / ".ipynb_checkpoints").mkdir()
    shutil.copy(IMAGES / "red/0.png", tmp_path / ".ipynb_checkpoints" / "0.png")
    (tmp_path / "cats").mkdir()
    shutil.copy(IMAGES / "not_an_image.png", tmp_path / "cats" / "a.jpg")
    with pytest.raises(DataError) as e:
        load("image_folder", paths={"train": str(tmp_path)})
    assert f"{tmp_path}, row 5: not an image file ({tmp_path / 'cats/a.jpg'})" in str(e.value)
    ds = load("image_folder", paths={"train": str(tmp_path)}, on_bad_row="skip")["train"]
    assert ds["label"] == ["Red Things"] * 4 and ds["row"] == [1, 2, 3, 4]
    assert ds["image"][3].endswith("UPPER.PNG")
    assert "skipped 1 bad rows of 5" in caplog.text


def test_image_folder_without_classes_or_images_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        load("image_folder", paths={"train": str(tmp_path)})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load("image_folder", paths={"train": str(tmp_path)})
    with pytest.raises(DataError, match="no such folder"):
        load("image_folder", paths={"train": str(tmp_path / "nope")})


@pytest.mark.parametrize("template", ["a photo", "a photo of a {name}", "{label} and {0}", "{{label}}", "{label"])
def test_caption_template_must_fill_label_and_nothing_else(template):
    with pytest.raises(ConfigError, match="data.caption_template"):
        check_caption_template(template)
    with pytest.raises(ConfigError):
        load("image_folder", paths={"train": str(IMAGES)}, caption_template=template)


def test_good_caption_templates_pass():
    for template in ("a photo of a {label}", "{label} 사진", "{label}", "{{not}} a {label}"):
        check_caption_template(template)


def test_open_image_decodes_a_file_to_rgb_and_names_a_broken_one(tmp_path):
    image = open_image(str(IMAGES / "red/1.png"))
    assert image.mode == "RGB" and image.size == (8, 8) and image.getpixel((3, 3)) == (200, 0, 0)
    # A file named like an IDX reference ('<existing file>#<digits>') is still that file.
    (tmp_path / "scan").write_text("not an IDX file")
    grey = tmp_path / "scan#2"
    open_image(str(IMAGES / "blue/0.png")).convert("L").save(grey, "PNG")
    assert open_image(str(grey)).mode == "RGB"
    with pytest.raises(DataError, match=r"not_an_image\.png: cannot decode"):
        open_image(str(IMAGES / "not_an_image.png"))
    with pytest.raises(DataError, match=r"nope\.png: no such image file"):
        open_image(str(tmp_path / "nope.png"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("EMBED_CACHE_DIR", raising=False)
    assert default_cache_dir() == Path("data/.cache")
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_the_data_configs_compose_against_the_schema():
    ko = compose_config(["data=fashion_mnist_ko"]).data
    assert ko.name == "fashion_mnist" and list(ko.class_names) == FASHION_MNIST_KO and ko.caption_template == "{label} 사진"
    en = compose_config(["data=fashion_mnist"]).data
    assert list(en.class_names) == FASHION_MNIST_EN and en.caption_template == "a photo of a {label}"
    files = compose_config(["data=image_text_file", "data.columns.image=file"]).data
    assert files.name == "image_text_file" and files.columns.image == "file" and files.columns.text == "text"
    assert compose_config(["data=image_folder"]).data.name == "image_folder"


# ---------------------------------------------------------------- Fashion-MNIST


def write_idx(folder: Path, prefix: str, count: int, images_magic: int = 2051, label_count: int | None = None) -> None:
    """A small Fashion-MNIST-shaped set: image i is filled with i % 256, its label is i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.repeat(np.arange(count, dtype=np.int64) % 256, 28 * 28).astype(np.uint8)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4I", images_magic, count, 28, 28) + pixels.tobytes())
    label_count = count if label_count is None else label_count
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">2I", 2049, label_count) + (np.arange(label_count) % 10).astype(np.uint8).tobytes())


def load_fashion(data_dir, cache_dir, splits=("train", "dev", "test"), **kw):
    return load("fashion_mnist", splits=splits, data_dir=data_dir, cache_dir=cache_dir, **kw)


def test_fashion_mnist_splits_captions_refs_and_cache_on_small_idx_files(tmp_path):
    write_idx(tmp_path / "data" / "fashion-mnist", "train", 1003)
    write_idx(tmp_path / "data" / "fashion-mnist", "t10k", 4)
    out = load_fashion(tmp_path / "data", tmp_path / "cache", class_names=FASHION_MNIST_KO, caption_template="{label} 사진")
    assert {s: len(d) for s, d in out.items()} == {"train": 3, "dev": 1000, "test": 4}
    cached = tmp_path / "cache" / "fashion-mnist" / "train-images-idx3-ubyte"
    assert out["dev"]["row"][:2] == [3, 4] and out["dev"]["image"][0] == f"{cached}#3"
    assert out["dev"]["label"][0] == "드레스" and out["dev"]["text"][0] == "드레스 사진"  # image 3: label 3
    image = open_image(out["dev"]["image"][-1])  # image 1002: every pixel 1002 % 256
    assert image.mode == "RGB" and image.size == (28, 28) and set(image.getdata()) == {(1002 % 256,) * 3}
    assert cached.stat().st_size == 16 + 1003 * 784
    before = cached.stat().st_mtime_ns
    load_fashion(tmp_path / "data", tmp_path / "cache", splits=("train",))
    assert cached.stat().st_mtime_ns == before
    head = cached.read_bytes()[:100]
    cached.unlink()  # a new file: this process still maps the old one
    cached.write_bytes(head)  # a cut-short cache file is made again
    load_fashion(tmp_path / "data", tmp_path / "cache", splits=("train",))
    assert cached.stat().st_size == 16 + 1003 * 784


def test_fashion_mnist_limits_and_english_defaults(tmp_path):
    write_idx(tmp_path / "fashion-mnist", "train", 1010)
    out = load_fashion(tmp_path, tmp_path / "cache", splits=("train", "dev"), max_train_samples=2, max_eval_samples=3)
    assert out["train"]["row"] == [0, 1] and out["dev"]["row"] == [10, 11, 12]
    assert out["train"]["label"] == ["T-shirt/top", "Trouser"] and out["train"]["text"][1] == "a photo of a Trouser"


def test_fashion_mnist_bad_files_are_named(tmp_path):
    write_idx(tmp_path / "fashion-mnist", "train", 1001, images_magic=2049)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not an IDX images file \(magic number 2049"):
        load_fashion(tmp_path, tmp_path / "cache", splits=("train",))
    write_idx(tmp_path / "fashion-mnist", "train", 1001, label_count=1000)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: 1000 labels for the 1001 images"):
        load_fashion(tmp_path, tmp_path / "cache", splits=("train",))
    write_idx(tmp_path / "fashion-mnist", "train", 1000)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 1000 images; the train file needs more than the 1000"):
        load_fashion(tmp_path, tmp_path / "cache", splits=("dev",))
    with pytest.raises(ConfigError, match="data.class_names lists 2 names"):
        load_fashion(tmp_path, tmp_path / "cache", splits=("train",), class_names=["a", "b"])


def test_fashion_mnist_offline_and_missing_names_the_files_and_env_var(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as e:
        load_fashion(tmp_path, tmp_path / "cache", splits=("test",))
    message = str(e.value)
    assert str(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz") in message
    assert "network is unreachable" in message and "EMBED_DATA_DIR" in message


def test_open_image_on_a_corrupt_idx_file_names_it(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2051, 10, 28, 28) + b"\0" * 100)  # the header promises 10 images
    with pytest.raises(DataError, match=str(path)):
        open_image(f"{path}#0")


# The real files (read-only, shared): labels and sizes of the published dataset.
FASHION = SHARED_DATA / "fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(), reason=f"Fashion-MNIST not found under {SHARED_DATA} (set EMBED_DATA_DIR)"
)


@pytest.fixture(scope="module")
def real_fashion(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, load_fashion(SHARED_DATA, cache, max_eval_samples=10)


@needs_fashion
def test_real_fashion_mnist_sizes_labels_and_images(real_fashion):
    cache, out = real_fashion
    assert {s: len(d) for s, d in out.items()} == {"train": 59000, "dev": 10, "test": 10}
    # Published labels: train starts 9 0 0 3 0 2, test 9 2 1 1 6 1; dev is the train file's last 1,000.
    assert out["train"]["label"][:6] == [FASHION_MNIST_EN[i] for i in (9, 0, 0, 3, 0, 2)]
    assert out["test"]["label"][:6] == [FASHION_MNIST_EN[i] for i in (9, 2, 1, 1, 6, 1)]
    assert out["train"]["text"][0] == "a photo of a Ankle boot" and out["dev"]["row"][0] == 59000
    image = open_image(out["test"]["image"][0])
    assert image.mode == "RGB" and image.size == (28, 28)
    raw = (cache / "fashion-mnist" / "t10k-images-idx3-ubyte").read_bytes()[16 : 16 + 784]
    assert np.array_equal(np.asarray(image)[:, :, 0], np.frombuffer(raw, np.uint8).reshape(28, 28))


@needs_fashion
def test_real_fashion_mnist_cache_is_reused(real_fashion):
    cache, _ = real_fashion
    files = sorted((cache / "fashion-mnist").iterdir())
    assert [f.name for f in files] == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte"]
    before = [f.stat().st_mtime_ns for f in files]
    again = load_fashion(SHARED_DATA, cache, splits=("dev", "test"), max_eval_samples=1)
    assert [f.stat().st_mtime_ns for f in files] == before and again["dev"]["row"] == [59000]
