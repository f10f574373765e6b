"""Shipped configs: addressable by name from any folder, and each one loads for the command it is listed for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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
