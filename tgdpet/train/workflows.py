"""``train`` and ``tgd-finetune``: a dataset manifest in, a run folder out (see :mod:`.outputs`).

Both run in one process or, under ``torchrun``, in several (:mod:`.ddp`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .. import __version__, tgd
from ..builtin import resolve_model
from ..checkpoint import load_model
from ..data import Manifest, PatchDataset, Study, load_manifest, load_studies
from ..domain import Domain, domain_of, training_domain
from ..errors import TgdpetError
from ..models import DnCNN, build_model
from . import ddp
from ..config import FinetuneConfig, LoopConfig, TrainConfig, check_resumable, to_yaml
from ..precision import amp_dtype
from .loop import Echo, FitResult, Outputs, fit
from .methods import EWC, TGD, AllLayers, ChannelSparsity, LastBlocks, Method, empirical_fisher
from .outputs import STATE, RunFolder


def patch_dataset(studies: list[Study], model: DnCNN, cfg: LoopConfig, env: ddp.DistEnv) -> PatchDataset:
    """This rank's share of every epoch: ``steps_per_epoch`` batches of ``batch_size / world_size`` patches."""
    if cfg.batch_size % env.world_size:
        raise TgdpetError(
            f"--batch-size {cfg.batch_size} does not split evenly over {env.world_size} processes; use a multiple "
            f"of {env.world_size}."
        )
    return PatchDataset(
        studies,
        patch_size=cfg.patch_size,
        in_slices=model.config.in_slices,
        length=cfg.steps_per_epoch * (cfg.batch_size // env.world_size),
        seed=cfg.seed,
        rank=env.rank,
        flips=cfg.flips,
        structure_fraction=cfg.structure_fraction,
    )


def prepare_model(model: DnCNN, cfg: LoopConfig, device: torch.device) -> DnCNN:
    """The model on its training device and memory format (channels-last: about 1.3x faster on CPU)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_method(
    model: DnCNN,
    cfg: FinetuneConfig,
    *,
    patches: PatchDataset,
    device: torch.device,
    env: ddp.DistEnv = ddp.DistEnv(),
    saved: dict | None = None,
    masks: tgd.Masks | None = None,
) -> Method:
    """Set up ``cfg.method`` on ``model`` (already on its device and memory format).

    ``saved`` is the method's state from a training state being resumed: TGD
    reuses its masks and EWC its Fisher and ``theta*`` instead of computing
    them from the (by then fine-tuned) weights; ``masks`` are TGD's masks when the caller built them
    already (:func:`tgd_masks`, to refuse useless ones before writing anything). EWC's Fisher is estimated on
    the first ``ewc_patches`` patches of epoch 0, averaged over the ranks.
    """
    if cfg.method == "all":
        return AllLayers(model)
    if cfg.method == "last3":
        return LastBlocks(model, 3)
    if cfg.method == "tgd":
        if saved:
            masks = saved["masks"]
        elif masks is None:
            masks = tgd_masks(model, cfg)
        revived = saved.get("revived", {}) if saved else {}
        if cfg.revive and not saved:  # a resumed run's weights already hold its revived channels
            revived = _revive(model, masks, patches, cfg.seed)
        return TGD(
            model, masks, mode=cfg.tgd_mode, phi=cfg.phi, conv1=cfg.conv1, bn_stats=cfg.bn_stats,
            read_kernels=cfg.read_kernels, revived=revived,
        )  # fmt: skip
    if saved:
        return EWC.from_state(model, saved, cfg.ewc_lambda)
    patches.set_epoch(0)
    n = min(max(cfg.ewc_patches // env.world_size, 1), len(patches))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(patches, range(n)), batch_size=16, collate_fn=PatchDataset.collate
    )
    fisher = {k: ddp.mean_over_ranks(v, env) for k, v in empirical_fisher(model, loader, device).items()}
    return EWC(model, fisher, cfg.ewc_lambda)


def tgd_masks(model: DnCNN, cfg: FinetuneConfig) -> tgd.Masks:
    """TGD's masks at ``cfg.phi``, refused when they retrain nothing: the run would only copy the model."""
    masks = tgd.build_masks(model, cfg.phi, conv1=cfg.conv1)
    if not any(bool(m.any()) for m in masks.values()):
        raise TgdpetError(
            f"at --phi {cfg.phi:g} no kernel of the model scores below the threshold, so TGD would retrain "
            "nothing; pass a larger --phi (tgdpet score-kse shows the model's scores)."
        )
    return masks


def _revive(model: DnCNN, masks: dict, patches: PatchDataset, seed: int) -> dict[int, int]:
    """:func:`tgd.revive` the retrained channels that are silent on the first 256 patches of epoch 0.

    Under torchrun every rank draws its own patches and new kernels; DistributedDataParallel then
    starts every rank from rank 0's weights.
    """
    patches.set_epoch(0)
    inputs, _ = patches.__getitems__(list(range(min(256, len(patches)))))
    device = next(model.parameters()).device
    silent = tgd.silent_channels(model, inputs.to(device))
    return tgd.revive(model, masks, silent, generator=torch.Generator().manual_seed(seed))


def _file_identity(name: str, path: Path) -> dict:
    """``{name: resolved path, name_sha256: digest}``: what a run records of an input to recognise it on --resume."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {name: str(path.resolve()), f"{name}_sha256": digest}


def _check_outside(out: str | os.PathLike, inputs: list[Path], what: str) -> None:
    """Refuse an --out folder that holds one of the run's inputs: the run's files would delete or replace it."""
    folder = Path(out).resolve()
    for path in inputs:
        if folder == path.resolve() or folder in path.resolve().parents:
            raise TgdpetError(
                f"--out {out} holds the {what} {path}, which the run's files could replace; choose another --out, "
                f"or move the {what} out of that folder."
            )


def _check_same_inputs(run: RunFolder, recorded: dict | None, inputs: dict) -> None:
    """Refuse a resume named with other DATA or another MODEL than the run was started with.

    The run would go on training on them and its models would record them as where they came from. The
    model is recognised by its content (a copy elsewhere is the same model); the data by its manifest's
    path and content, as the manifest names its images relative to its folder. A state written by a
    tgdpet that recorded no inputs is not checked.
    """
    for name, what in (("data", "DATA"), ("model", "MODEL")):
        if not recorded or name not in recorded:
            continue
        same = recorded[f"{name}_sha256"] == inputs[f"{name}_sha256"]
        if name == "data":
            same = same and recorded[name] == inputs[name]
        if not same:
            raise TgdpetError(
                f"cannot resume: the run in {run.path} was started with {what} {recorded[name]}, and "
                f"{inputs[name]} is not that file as it was then; resume with the original {what}, or drop "
                "--resume and start a new run in another --out."
            )


def _check_state_fits(run: RunFolder, state: dict, model: DnCNN, what: str) -> None:
    """Refuse a training state whose weights are not of ``model``'s architecture (loading them would crash)."""
    saved = state.get("model")
    expected = model.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(expected) or any(
        getattr(saved[k], "shape", None) != t.shape for k, t in expected.items()
    ):
        raise TgdpetError(
            f"{run.file(STATE)} holds the weights of another network than {what}; resume with the run's own "
            "inputs, or drop --resume and start a new run in another --out."
        )


def _open_run(
    out: str | os.PathLike, cfg: LoopConfig, model: DnCNN, *, inputs: dict, what: str, resume: bool,
    overwrite: bool, env, device
) -> tuple[RunFolder, dict | None]:
    """Prepare the run folder (rank 0), read the state to resume (every rank) and check it fits this run.

    A resume with changed settings or other inputs is refused before anything in the folder changes;
    ``what`` names the network the state must fit.
    """
    run = RunFolder(out)
    ddp.on_main(env, device, lambda: run.prepare(resume=resume, overwrite=overwrite))
    state = run.load_state() if resume else None
    if state is not None:
        check_resumable(state["config"], cfg, lambda amp: amp_dtype(amp, device, model.config))
        _check_same_inputs(run, state.get("inputs"), inputs)
        _check_state_fits(run, state, model, what)
    return run, state


def _config_yaml(cfg: LoopConfig, command: str) -> str:
    """The run's config.yaml, written with the first epoch's files (:class:`Outputs`), not before."""
    return to_yaml(cfg, header=f"{command}\nresolved config, tgdpet {__version__}")


def _data(manifest: Manifest) -> tuple[list[Study], list[Study], dict]:
    train_studies = load_studies(manifest, "train")
    if not train_studies:
        raise TgdpetError(
            f"{manifest.path} has no studies in the 'train' split; mark some studies \"split\": \"train\"."
        )
    val = load_studies(manifest, "val")
    info = {
        "data": str(manifest.path.resolve()),
        "train_studies": [s.id for s in train_studies],
        "val_studies": [s.id for s in val],
    }
    return train_studies, val, info


def _union(base: Domain | None, new: Domain) -> Domain:
    """A fine-tuned model's range: its base's and the new data's (TGD keeps the old task)."""
    return new if base is None else base.union(new)


def data_domain(manifest: Manifest, studies: list[Study]) -> Domain:
    """The range of images ``studies`` cover: their voxel sizes and units, and the protocols and count
    levels the manifest's ``meta`` names (``tgdpet simulate`` writes them)."""
    meta = {e.id: e.meta for e in manifest.studies}
    return training_domain(
        [s.voxel_mm for s in studies if s.voxel_mm is not None],
        [s.units for s in studies if s.units],
        protocols=[str(meta[s.id]["protocol"]) for s in studies if meta[s.id].get("protocol")],
        count_levels_s=[float(t) for s in studies for t in meta[s.id].get("count_levels_s", ())],
        tracer=next((str(meta[s.id]["tracer"]) for s in studies if meta[s.id].get("tracer")), None),
    )


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: bool = True,
    echo: Echo | None = None,
    command: str = "tgdpet train",
) -> FitResult:
    """Train a DnCNN of ``cfg.preset`` from scratch on a manifest's train split; write the run to ``out``.

    Validation uses the manifest's ``val`` studies (best.safetensors is the
    lowest validation loss); without them the training loss selects it.
    """
    env, device = ddp.distributed(cfg.device)
    manifest = load_manifest(data)
    # Everything that can refuse the input comes before the run folder is touched.
    train_studies, val, info = _data(manifest)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = prepare_model(build_model(cfg.preset, in_slices=cfg.in_slices), cfg, device)
    patches = patch_dataset(train_studies, model, cfg, env)
    _check_outside(out, manifest.files(), "data file")
    inputs = _file_identity("data", manifest.path)
    run, state = _open_run(
        out, cfg, model, inputs=inputs, what=f"preset {cfg.preset}", resume=resume, overwrite=overwrite, env=env,
        device=device,
    )  # fmt: skip
    method = ChannelSparsity(model, cfg.channel_penalty) if cfg.channel_penalty else Method(model)
    domain = data_domain(manifest, train_studies + val).to_json()
    outputs = Outputs(
        run, preset=cfg.preset, provenance={"workflow": "train", "command": command, "domain": domain, **info},
        config_yaml=_config_yaml(cfg, command), inputs=inputs,
    )  # fmt: skip
    result = fit(
        model, method, patches, cfg,
        device=device, env=env, val=val, outputs=outputs, state=state, progress_bar=progress_bar, echo=echo,
    )  # fmt: skip
    method.close()
    return result


def finetune(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: bool = True,
    echo: Echo | None = None,
    command: str = "tgdpet tgd-finetune",
) -> FitResult:
    """Adapt a trained model to a new dataset by ``cfg.method`` (tgd, all, last3, ewc); write the run to ``out``.

    With TGD the saved models carry the masks of this round, appended to the
    starting model's ``masks_history``: fine-tuning a TGD model again is
    TGD^2, with masks from its fine-tuned weights.
    """
    env, device = ddp.distributed(cfg.device)
    model_path = resolve_model(model_path)  # a file, or a built-in model's name: a wrong name is said first
    manifest = load_manifest(data)
    record = load_model(model_path, device)
    record.check_normalization(str(model_path))
    # Everything that can refuse the input comes before the run folder is touched.
    train_studies, val, info = _data(manifest)
    model = prepare_model(record.model, cfg, device)
    patches = patch_dataset(train_studies, model, cfg, env)
    masks = tgd_masks(model, cfg) if cfg.method == "tgd" and not resume else None
    _check_outside(out, [Path(model_path)], "model")
    _check_outside(out, manifest.files(), "data file")
    inputs = {**_file_identity("data", manifest.path), **_file_identity("model", Path(model_path))}
    run, state = _open_run(
        out, cfg, model, inputs=inputs, what=str(model_path), resume=resume, overwrite=overwrite, env=env,
        device=device,
    )  # fmt: skip
    if state is not None:
        # The method's frozen values come from the run's own weights, not from MODEL's.
        model.load_state_dict(state["model"])
    method = build_method(
        model, cfg, patches=patches, device=device, env=env, saved=state["method"] if state else None, masks=masks
    )
    outputs = Outputs(
        run,
        preset=record.preset,
        base_history=record.masks_history,
        provenance={
            "workflow": "tgd-finetune",
            "command": command,
            "base_model": str(Path(model_path).resolve()),
            "base_provenance": {k: record.provenance.get(k) for k in ("workflow", "data", "base_model")},
            "domain": _union(domain_of(record.provenance), data_domain(manifest, train_studies + val)).to_json(),
            **info,
        },
        config_yaml=_config_yaml(cfg, command),
        inputs=inputs,
    )
    result = fit(
        model, method, patches, cfg,
        device=device, env=env, val=val, outputs=outputs, state=state, progress_bar=progress_bar, echo=echo,
    )  # fmt: skip
    method.close()
    return result
