"""Every ``--help`` shows its defaults, and the defaults it shows are the ones the commands use."""

from __future__ import annotations

import dataclasses
import re

import click
import pytest

from tgdpet.cli import main
from tgdpet.configs import names_for
from tgdpet.models import PRESETS
from tgdpet.simulate.recon import PROTOCOLS
from tgdpet.train import FinetuneConfig, N2NConfig, TrainConfig

#: Options that name an optional input or output: leaving them out means "none", not a value.
NO_DEFAULT = {"--out", "--config", "--model", "--full", "--save-model", "--json", "--volume", "--out-dir"}

COMMANDS = {"train": TrainConfig, "tgd-finetune": FinetuneConfig, "n2n-online": N2NConfig}


def _shown_defaults(command: str) -> dict[str, str]:
    """``--option -> the default its --help line shows``, from click's own rendering of each line."""
    cmd = main.commands[command]
    ctx = click.Context(cmd, info_name=command)
    shown = {}
    for option in cmd.params:
        record = option.get_help_record(ctx) if isinstance(option, click.Option) else None
        found = re.search(r"\[default: ([^\]]+)\]", record[1]) if record else None
        if found:
            shown[option.opts[-1]] = found.group(1)
    return shown


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_with_a_value_shows_its_default(name):
    command = main.commands[name]
    for option in command.params:
        if not isinstance(option, click.Option) or option.is_flag or option.count:
            continue
        if set(option.opts) & NO_DEFAULT or option.required:
            continue
        shown = (option.show_default and option.default is not None) or "[default:" in (option.help or "")
        assert shown, f"tgdpet {name} {option.opts[0]} hides its default"


@pytest.mark.parametrize("command, cls", COMMANDS.items())
def test_the_defaults_in_the_help_are_the_config_defaults(command, cls):
    """The help text is generated from the config dataclasses; this checks the generator shows their values."""
    shown = _shown_defaults(command)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    keys = ["epochs", "patches_per_epoch", "batch_size", "patch_size", "lr", "seed", "device"]
    if cls is not TrainConfig:
        keys += ["phi", "method", "conv1", "tgd_mode", "bn_stats", "ewc_lambda"]
    else:
        keys += ["preset", "channel_penalty"]
    for key in keys:
        option, value = "--" + key.replace("_", "-"), defaults[key]
        text = shown[option]
        assert (float(text) == value) if isinstance(value, (int, float)) else (text == value), (command, option, text)
    config_help = main.commands[command].params[[p.name for p in main.commands[command].params].index("config")].help
    for name in names_for(command):  # the shipped configs are named where --config is explained
        assert name in config_help


def _option_help(command: str, option: str) -> str:
    cmd = main.commands[command]
    return next(p.help for p in cmd.params if isinstance(p, click.Option) and option in p.opts)


@pytest.mark.parametrize("command, option, registry", [("train", "--preset", PRESETS),
                                                      ("simulate", "--protocols", PROTOCOLS)])
def test_the_help_names_every_entry_of_its_registry(command, option, registry):
    # The help is written by hand (the CLI starts without importing torch, which the registries need): it must
    # still list every preset and protocol a user can ask for, and nothing that no longer exists.
    listed = re.sub(r"\(.*?\)|\[.*?\]", "", _option_help(command, option)).split(":", 1)[1]
    named = {word.strip(" .") for word in re.split(r",| or ", listed)}
    assert named == set(registry)
