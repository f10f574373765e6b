"""The models shipped inside tgdpet, and what each one's file says about how it was made.

Everything shown comes from the model file's own metadata (written by
:func:`tgdpet.checkpoint.save_model`), never from a table kept here, so a
retrained model describes itself. What a file does not record is shown as
``unknown`` rather than guessed. Wherever a command takes a model file it also
takes a built-in model's name (its file's stem), so adapting the built-in
model (``tgdpet tgd-finetune dncnn-fdg-uniform64 DATA --out RUN``) needs no
path into the installation.
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
    """The model files shipped with this installation: the default first, then the others by name."""
    return sorted(PRETRAINED_DIR.glob("*.safetensors"), key=lambda p: (p.name != DEFAULT_MODEL, p.name))


def is_builtin(path: str | Path) -> bool:
    """Whether ``path`` is one of the model files shipped with this installation."""
    return Path(path).resolve().parent == PRETRAINED_DIR.resolve()


def resolve_model(spec: str | Path | None) -> Path:
    """The model file a user means: nothing (the default built-in model), a model file, or a built-in model's name.

    A file of that path wins over a built-in model of that name, so a model of one's own is never shadowed.
    Built-in models are named by their file's stem (``tgdpet models`` lists them).
    """
    if spec is None:
        return pretrained_model_path()
    path = Path(spec)
    if path.exists() or path.name != str(spec):  # a path the user typed: load_model names what is wrong with it
        return path
    named = PRETRAINED_DIR / (path.name if path.suffix == ".safetensors" else f"{path.name}.safetensors")
    if named.is_file():
        return named
    names = ", ".join(p.stem for p in builtin_model_paths())
    raise TgdpetError(
        f"model {str(spec)!r} is neither a file nor a built-in model's name ({names}; tgdpet models describes "
        "them); check the path or pick a name."
    )


def _voxel_size(provenance: dict) -> str:
    size = provenance.get("voxel_size_mm")
    if not size:
        return UNKNOWN
    return " x ".join(f"{float(v):g}" for v in size) + " mm"


def _training_data(provenance: dict, builtin: bool) -> str:
    """What the model learnt from; a shipped file's own data folder (a path on its maker's machine) is left out."""
    described = provenance.get("training_data")
    train, val = provenance.get("train_studies"), provenance.get("val_studies")
    # Entries of the manifest: a study reconstructed several ways, or listed twice, counts each time.
    counted = f"{len(train)} training + {len(val or [])} validation manifest entries" if train else None
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
    builtin = is_builtin(path)
    domain = domain_of(prov)
    card = {"file": str(path)}
    if prov.get("use_for"):  # what its maker measured it on, and what not to use it for
        card["use for"] = str(prov["use_for"])
    return card | {
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
