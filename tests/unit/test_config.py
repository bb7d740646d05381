"""The typed config: YAML in/out, dotted overrides, unknown keys, all problems reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunecraft.config import (
    DEFAULT_MODEL,
    RunConfig,
    build_config,
    dump_config,
    load_config,
    parse_override,
)
from tunecraft.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    cfg = build_config()
    assert cfg == RunConfig()
    assert cfg.model.name == DEFAULT_MODEL
    assert cfg.model.trust_remote_code is False  # remote code stays off unless asked for
    assert cfg.serve.host == "127.0.0.1"


def test_yaml_load(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "model:\n  name: ./my-model\n"
        "train:\n  method: lora\n  lr: 1e-4\n  epochs: 2\n"
        "lora:\n  target_modules: [q_proj, v_proj]\n"
        "data:\n",  # an empty section means "all defaults"
    )
    cfg = build_config(path)
    assert cfg.model.name == "./my-model"
    assert cfg.train.method == "lora"
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.val_fraction == 0.1


@pytest.mark.parametrize(
    ("item", "path", "value"),
    [
        ("train.lr=1e-4", ["train", "lr"], 1e-4),
        ("train.lr=3.0e-5", ["train", "lr"], 3e-5),
        ("train.max_steps=10", ["train", "max_steps"], 10),
        ("train.compile=true", ["train", "compile"], True),
        ("train.grad_clip=null", ["train", "grad_clip"], None),
        ("lora.target_modules=[q_proj, v_proj]", ["lora", "target_modules"], ["q_proj", "v_proj"]),
        # free text stays text, whatever YAML would make of it
        ("data.system_prompt=Answer: briefly", ["data", "system_prompt"], "Answer: briefly"),
        ("data.system_prompt=#1 rule: be kind", ["data", "system_prompt"], "#1 rule: be kind"),
        ("data.system_prompt=[oops", ["data", "system_prompt"], "[oops"),
        ('model.name="my model"', ["model", "name"], "my model"),
        ("train.out=runs/a=b", ["train", "out"], "runs/a=b"),
        ("model.name=inf", ["model", "name"], "inf"),  # a word, not a float
        ("data.template=", ["data", "template"], None),
    ],
)
def test_parse_override(item: str, path: list[str], value: object) -> None:
    got_path, got_value = parse_override(item)
    assert got_path == path
    if isinstance(value, float):
        assert isinstance(got_value, float) and got_value == pytest.approx(value)
    else:
        assert got_value == value


def test_overrides_beat_values_beat_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  lr: 0.001\n  seed: 1\n  epochs: 3\n")
    cfg = build_config(
        path,
        overrides=["train.lr=1e-4", "lora.r=8"],
        values={"train.lr": 0.5, "train.seed": 7, "train.epochs": None},  # None: not given
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.seed == 7
    assert cfg.train.epochs == 3
    assert cfg.lora.r == 8


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=1e-4"], "train.lrr: Extra inputs are not permitted"),
        (["trian.lr=1e-4"], "did you mean 'train'"),
        (["train.lerning_rate=1"], "known keys:"),
    ],
)
def test_unknown_keys_are_rejected(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_config(overrides=overrides)


def test_unknown_key_in_yaml_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  lrr: 0.001\n")
    with pytest.raises(ConfigError) as err:
        build_config(path)
    message = str(err.value)
    assert str(path) in message and "train.lrr" in message and "did you mean 'lr'" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  method: qlora\n  lr: 2\nlora:\n  r: 0\n")
    with pytest.raises(ConfigError) as err:
        build_config(path, overrides=["no-equals-sign", "serve.port=99999"])
    message = str(err.value)
    for field in ("train.method", "train.lr", "lora.r", "serve.port", "'no-equals-sign'"):
        assert field in message, field
    assert "'qlora'" in message  # the bad value is shown
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_config(_write(tmp_path, text))


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "nope.yaml")


def test_override_into_a_non_section_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="train is not a section"):
        build_config(path, overrides=["train.lr=1e-4"])


def test_dump_load_round_trip(tmp_path: Path) -> None:
    cfg = build_config(
        overrides=[
            "model.name=./tiny",
            "train.lr=1e-10",  # tiny floats are dumped as 1.0e-10: must come back as floats
            "train.method=full",
            "train.grad_clip=null",
            "lora.target_modules=[q_proj]",
            "eval.baselines=[base]",
            "data.system_prompt=You are terse.",
        ]
    )
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    dump_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert isinstance(loaded.train.lr, float)
    dump_config(loaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
