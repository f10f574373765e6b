"""The models shipped inside tgdpet, and what each one's file says about how it was made.

Everything shown comes from the model file's own metadata (written by
:func:`tgdpet.checkpoint.save_model`), never from a table kept here, so a
retrained model describes itself. What a file does not record is shown as
``unknown`` rather than guessed.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .domain import domain_of
from .errors import TgdpetError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

UNKNOWN = "unknown"


#: The model ``denoise`` uses when no ``--model`` is given.
DEFAULT_MODEL = "dncnn-fdg-uniform64.safetensors"


def pretrained_model_path() -> Path:
    """The model file shipped with tgdpet and used when no ``--model`` is given."""
    path = PRETRAINED_DIR / DEFAULT_MODEL
    if not path.is_file():
        raise TgdpetError(
            f"the built-in pretrained model {path} is missing from this installation; reinstall tgdpet or pass "
            "--model with a model file of your own."
        )
    return path


def builtin_model_paths() -> list[Path]:
    """The model files shipped with this installation, by name."""
    return sorted(PRETRAINED_DIR.glob("*.safetensors"))


def _voxel_size(provenance: dict) -> str:
    size = provenance.get("voxel_size_mm")
    if not size:
        return UNKNOWN
    return " x ".join(f"{float(v):g}" for v in size) + " mm"


def _training_data(provenance: dict, builtin: bool) -> str:
    """What the model learnt from; a shipped file's own data folder (a path on its maker's machine) is left out."""
    described = provenance.get("training_data")
    train, val = provenance.get("train_studies"), provenance.get("val_studies")
    counted = f"{len(train)} training + {len(val or [])} validation studies" if train else None
    where = None if builtin else provenance.get("data")
    parts = [p for p in (described, counted, f"from {where}" if where else None) if p]
    return "; ".join(parts) if parts else UNKNOWN


def _epochs(provenance: dict) -> str:
    """Epochs run when the file was saved, and of how many planned: a best-epoch file is often not the last."""
    done, planned = provenance.get("epochs"), (provenance.get("config") or {}).get("epochs")
    if done is None:
        return "? epochs"
    if planned and planned != done:
        return f"epoch {done} of {planned}"
    return f"{done} epochs"


def _command(provenance: dict, builtin: bool) -> str:
    """The command that made the file; for a shipped file, its folder arguments as the recipe names them."""
    command = str(provenance.get("recipe") or provenance.get("command", UNKNOWN))
    if builtin and provenance.get("data") and not provenance.get("recipe"):
        folder = str(Path(provenance["data"]).parent)
        command = command.replace(folder, "DATA")
    return command


def _training_run(provenance: dict) -> str:
    if "steps" not in provenance:
        return UNKNOWN
    run = f"{_epochs(provenance)}, {provenance['steps']:,} steps"
    if "patches_seen" in provenance:
        run += f", {provenance['patches_seen']:,} patches"
    if "wall_time_s" in provenance:
        run += f", {provenance['wall_time_s'] / 60:.0f} min on {provenance.get('device', '?')}"
    metric = provenance.get("selected_by")
    if metric and metric in provenance:
        run += f"; this file is the epoch with the lowest {metric} ({provenance[metric]:.3g})"
    return run


def model_card(path: str | Path) -> dict[str, str]:
    """One model's provenance as ordered ``field -> text`` (the model file is fully checked on the way)."""
    record = load_model(path, device="cpu")
    prov = record.provenance
    network = record.config
    parameters = sum(p.numel() for p in record.model.parameters())
    rounds = len(record.masks_history)
    builtin = Path(path).resolve().parent == PRETRAINED_DIR.resolve()
    domain = domain_of(prov)
    return {
        "file": str(path),
        "network": f"DnCNN, preset {record.preset or UNKNOWN}: {len(network.widths)} conv layers "
        f"(widths {', '.join(map(str, network.widths))}), {parameters:,} parameters, "
        f"{network.in_slices} adjacent slices in",
        "tracer": str(prov.get("tracer", UNKNOWN)),
        "protocol": str(prov.get("protocol", UNKNOWN)),
        "voxel size": _voxel_size(prov),
        "trained on": domain.describe() if domain is not None else UNKNOWN,
        "training data": _training_data(prov, builtin),
        "training": f"{prov.get('workflow', UNKNOWN)}: {_training_run(prov)}"
        + (f"; TGD-fine-tuned {rounds} time(s)" if rounds else ""),
        "command": _command(prov, builtin),
        "normalisation": ", ".join(f"{k} {v}" for k, v in record.normalization.items()),
        "written by": f"tgdpet {record.version}, torch {prov.get('torch_version', UNKNOWN)}",
    }
