"""One config convention for every model: architecture in models/configs/FAMILY-NAME.json,
training settings in models/configs/train/FAMILY-NAME.json, read by models.config alone."""

from __future__ import annotations

import json

import pytest

from cli import main
from models.config import (
    CONFIG_DIR,
    FAMILIES,
    TRAIN_CONFIG_DIR,
    config_id,
    config_names,
    config_path,
    model_config,
    train_config,
)
from models.train.generator import GeneratorTrainConfig
from models.train.parser import ParserTrainConfig
from models.train.structurenet import TrainConfig

# Keys that are training settings: none may sit in an architecture file.
TRAINING_KEYS = {"train", "train_vae", "train_generator", "pairs", "steps", "lr", "batch"}


def test_every_file_belongs_to_a_family_and_trains_a_known_architecture() -> None:
    for path in CONFIG_DIR.glob("*.json"):
        family = path.stem.rpartition("-")[0]
        assert family in FAMILIES, path.name
        assert not TRAINING_KEYS & set(json.loads(path.read_text())), path.name
    for path in TRAIN_CONFIG_DIR.glob("*.json"):
        assert (CONFIG_DIR / path.name).is_file(), f"{path.name} trains no architecture"
    assert {"tiny"} <= set(config_names("parser"))
    assert {"tiny", "base"} <= set(config_names("structurenet")) & set(config_names("generator"))


def test_short_and_full_names_are_one_config() -> None:
    assert config_id("generator", "tiny") == config_id("generator", "generator-tiny")
    assert model_config("parser", "tiny") == model_config("parser", "parser-tiny")
    assert str(config_path("generator", "tiny", train=True)) == (
        "models/configs/train/generator-tiny.json")
    with pytest.raises(ValueError, match="unknown parser config 'huge'; available: tiny"):
        model_config("parser", "huge")
    with pytest.raises(ValueError, match="unknown model family"):
        config_names("vae")


def test_trainers_take_the_named_files() -> None:
    gen = GeneratorTrainConfig(config="base")
    assert gen.model == model_config("generator", "base")
    assert gen.train == train_config("generator", "base")
    assert (gen.out, gen.vae_out, gen.run_dir) == (
        "models/weights/generator-base", "models/weights/vae-base", "runs/generator-base")
    parser = ParserTrainConfig()
    assert (parser.config, parser.out) == ("parser-tiny", "models/weights/parser-tiny")
    assert TrainConfig(config="base").run_dir == "runs/structurenet-base"
    # A model without a training file of its own trains with its trainer's defaults.
    assert train_config("parser", "tiny") == {}


@pytest.mark.parametrize("argv, message", [
    (["train", "parser", "--config", "huge"], "unknown parser config 'huge'; available: tiny"),
    (["train", "structurenet", "--config", "structurenet-huge"],
     "unknown structurenet config 'structurenet-huge'"),
    (["train", "structurenet", "--n-train", "0"], "--n-train must be at least 1"),
    (["train", "generator", "--minutes", "0"], "--minutes must be above 0"),
    (["train", "silhouette", "--steps", "0"], "--steps must be at least 1"),
    (["train", "silhouette", "--config", "wide"], "unknown silhouette config 'wide'"),
    (["train", "decision", "--config", "wide"], "unknown decision config 'wide'"),
    (["train", "decision", "--n-train", "0"], "--n-train must be at least 1"),
])
def test_every_train_command_checks_its_settings_one_way(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
