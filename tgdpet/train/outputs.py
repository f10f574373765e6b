"""A training run's folder: models, resolved config, metrics, loss plot and resumable state.

``--out RUN`` holds::

    best.safetensors     the model with the lowest validation loss so far
                         (training loss when the manifest has no val studies)
    last.safetensors     the model after the latest epoch
    config.yaml          the resolved config (``--config RUN/config.yaml`` repeats the run)
    metrics.jsonl        one JSON object per epoch
    loss.png             training and validation loss per epoch
    training_state.pt    optimiser, counters, RNG states: what ``--resume`` needs

Every file is written atomically at the end of each epoch (none before the
first epoch ends), the training state last, so a run killed at any moment
resumes from its latest complete epoch, or starts again without --resume.
Only rank 0 of a multi-process run touches the folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..checkpoint import load_training_state, save_training_state
from ..errors import TgdpetError
from ..files import atomic_file

BEST = "best.safetensors"
LAST = "last.safetensors"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
STATE = "training_state.pt"
FILES = (BEST, LAST, CONFIG, METRICS, PLOT, STATE)


class RunFolder:
    """The ``--out`` folder of a training run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Check the folder can take this run, and create it.

        A new run needs a missing or empty folder; ``overwrite`` lets it
        replace an earlier run's files (other files in the folder are left
        alone). ``resume`` needs the folder of an earlier run.
        """
        if resume:
            if not self.file(STATE).is_file():
                advice = (
                    "drop --resume and add --overwrite to start the run afresh there, or choose another --out"
                    if self._holds_files() else "drop --resume to start the run"
                )  # fmt: skip
                raise TgdpetError(
                    f"there is nothing to resume in {self.path}: no epoch of a run there has ended (no {STATE}); "
                    f"{advice}."
                )
            return
        if self.path.exists():
            if not self.path.is_dir():
                raise TgdpetError(f"{self.path} exists and is not a folder; choose another --out.")
            if self._holds_files() and not overwrite:
                raise TgdpetError(
                    f"{self.path} already holds files; pass --resume to continue that run, --overwrite to replace "
                    "it, or choose another --out."
                )
            for name in FILES:
                self.file(name).unlink(missing_ok=True)
        else:
            # `--out runs/v1` on a fresh checkout: make runs/ too, as users expect of a run folder.
            self.path.mkdir(parents=True)

    def _holds_files(self) -> bool:
        """Whether the folder holds anything; hidden .tmp-* files are leftovers of a killed write, not a run."""
        return self.path.is_dir() and any(not f.name.startswith(".tmp-") for f in self.path.iterdir())

    def load_state(self) -> dict:
        return load_training_state(self.file(STATE))

    def write_text(self, name: str, text: str) -> None:
        with atomic_file(self.file(name)) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def write_metrics(self, history: list[dict]) -> None:
        self.write_text(METRICS, "".join(json.dumps(row) + "\n" for row in history))

    def plot(self, history: list[dict]) -> None:
        """Training and validation loss per epoch on a log scale (matplotlib's Agg canvas, no pyplot state)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for key, label in (("train_loss", "training (MSE)"), ("val_loss", "validation (MSE)")):
            points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (normalised intensities)")
        if any(r.get("train_loss", 0) > 0 for r in history):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_file(self.file(PLOT), suffix=".png") as tmp:
            fig.savefig(tmp, format="png")

    def save_state(self, state: dict) -> None:
        save_training_state(self.file(STATE), state)
