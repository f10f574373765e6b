"""The YAML configs shipped with tgdpet, addressable by name from any folder.

``--config small`` names ``small.yaml`` here; ``--config my.yaml`` (any path)
still names a file. The files are package data, so a plain ``pip install``
carries them and a first session does not depend on the working directory.
Copy one (``tgdpet/configs/small.yaml`` in the source tree) to start your own.

No torch here: the command line lists the names in ``--help``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TgdpetError

CONFIGS_DIR = Path(__file__).parent

#: The shipped configs each command takes (tests check that every file is listed once and loads).
BY_COMMAND: dict[str, tuple[str, ...]] = {
    "train": ("small", "paper"),
    "tgd-finetune": ("tgd-finetune",),
    "n2n-online": ("n2n-online",),
}


def names_for(command: str) -> tuple[str, ...]:
    """The shipped config names that fit ``command`` (for its ``--help``)."""
    return BY_COMMAND[command]


def shipped_names() -> list[str]:
    """Every shipped config name, from the files themselves."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def find_config(name_or_path: str | os.PathLike) -> Path:
    """The YAML file behind ``--config``: an existing file, else a shipped config by name.

    A path wins over a name, so a user's own ``small`` file is never
    shadowed by the shipped one.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if text in shipped_names():
        return CONFIGS_DIR / f"{text}.yaml"
    raise TgdpetError(
        f"config {text!r} is neither a file nor a shipped config name ({', '.join(shipped_names())}); "
        "check the path or pick a name."
    )
