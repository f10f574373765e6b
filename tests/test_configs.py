"""Shipped configs: addressable by name from any folder, and each one loads for the command it is listed for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tgdpet.cli import main
from tgdpet.config import to_yaml
from tgdpet.configs import BY_COMMAND, CONFIGS_DIR, find_config, shipped_names
from tgdpet.errors import TgdpetError
from tgdpet.train import FinetuneConfig, N2NConfig, TrainConfig, resolve_config

CLASSES = {"train": TrainConfig, "tgd-finetune": FinetuneConfig, "n2n-online": N2NConfig}
REPO = Path(__file__).resolve().parent.parent


def test_every_shipped_config_is_listed_for_exactly_one_command():
    listed = [name for names in BY_COMMAND.values() for name in names]
    assert sorted(listed) == sorted(set(listed)) == shipped_names()
    assert set(BY_COMMAND) == set(CLASSES)


@pytest.mark.parametrize("command, name", [(c, n) for c, names in BY_COMMAND.items() for n in names])
def test_a_name_loads_the_shipped_file_from_any_folder(command, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    cfg = resolve_config(CLASSES[command], name)
    written = yaml.safe_load((CONFIGS_DIR / f"{name}.yaml").read_text())
    assert written, name
    for key, value in written.items():
        assert getattr(cfg, key) == (float(value) if key == "lr" else value), (name, key)  # YAML reads 1.0e-3 as text
    assert f"--config {name} " in (CONFIGS_DIR / f"{name}.yaml").read_text().splitlines()[0]


def test_a_path_still_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("small").write_text("epochs: 3\n")
    assert resolve_config(TrainConfig, "small").epochs == 3
    assert resolve_config(TrainConfig, tmp_path / "small").epochs == 3
    assert find_config("small") == Path("small")


def test_an_unknown_name_is_refused_with_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TgdpetError, match="neither a file nor a shipped config name .*small"):
        resolve_config(TrainConfig, "tiny")


def test_the_configs_are_package_data():
    """A plain (non-editable) install carries what pyproject declares as package data."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*tgdpet = \[[^\]]*"configs/\*\.yaml"', pyproject)
    assert (CONFIGS_DIR / "__init__.py").is_file() and CONFIGS_DIR.parent.name == "tgdpet"


@pytest.mark.parametrize("key, value", [("detail_weight", 16.0), ("noise_relative_loss", True)])
def test_n2n_online_refuses_the_losses_that_read_its_noisy_target_as_clean(key, value, tmp_path):
    """Both losses are tgd-finetune's (clean targets); a Noise2Noise target is the other noisy half."""
    assert getattr(resolve_config(FinetuneConfig, **{key: value}), key) == value
    config = tmp_path / "n2n.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(TgdpetError, match="n2n-online trains with plain MSE"):
        resolve_config(N2NConfig, config)


FLOAT_SETTINGS = [("train", "lr"), ("train", "detail_weight"), ("train", "channel_penalty"),
                  ("train", "structure_fraction"), ("tgd-finetune", "ewc_lambda"), ("tgd-finetune", "phi")]


@pytest.mark.parametrize("command, key", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_must_be_a_finite_number_on_the_command_line(tmp_path, command, key, value):
    """NaN passed every range check (``value <= 0`` is False for NaN): --lr nan crashed in Adam with a
    traceback after writing config.yaml, and a NaN or infinite weight trained until it was reported as
    divergence blaming --lr. Refused before anything is written, so no DATA or MODEL is even read."""
    out = tmp_path / "run"
    args = [command, *(["no-such-model.safetensors"] if command == "tgd-finetune" else []), str(tmp_path),
            "-o", str(out), f"--{key.replace('_', '-')}", value, "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: {key.replace('_', '-')} must be a finite number, got {float(value)}; pass a " \
        f"number such as its default, {getattr(CLASSES[command], key)}.\n"
    assert not out.exists()


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_non_finite_value_in_a_config_file_is_refused(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"lr: {value}\n")
    with pytest.raises(TgdpetError, match="lr must be a finite number"):
        resolve_config(TrainConfig, config)


@pytest.mark.parametrize("reader, writer, command", [(FinetuneConfig, TrainConfig, "train"),
                                                     (TrainConfig, FinetuneConfig, "tgd-finetune"),
                                                     (N2NConfig, TrainConfig, "train")])  # fmt: skip
def test_another_command_s_config_is_named_as_such(tmp_path, reader, writer, command):
    """tgd-finetune --resume on a train run's folder reads its config.yaml; that said 'unknown keys
    channel_penalty, in_slices, preset' instead of whose run the folder holds."""
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(resolve_config(writer, **({"preset": "tiny"} if writer is TrainConfig else {}))))
    with pytest.raises(TgdpetError, match=f"holds the settings of a tgdpet {command} run .*, not of a "):
        resolve_config(reader, config)
