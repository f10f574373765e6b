"""The one training loop behind ``train``, ``tgd-finetune`` and ``n2n-online``.

Adam on the MSE between the network's output stack and the target stack,
constant learning rate (paper: Adam, lr 1e-3, MSE); ``detail_weight`` > 0
weights the MSE towards where the target has detail, ``noise_relative_loss``
divides each patch's error by its input's own noise (:func:`training_loss`).
Per step: forward under autocast where it pays, backward, optimiser step, then the method's
``after_step`` (TGD restores its frozen entries there). Per epoch: re-estimate
BatchNorm's statistics at the epoch's final weights (:func:`calibrate_batchnorm`),
validate on the held-out studies, then (rank 0) write the models, metrics, plot and
the training state. A non-finite loss stops the run before anything of that
epoch is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import capture_rng_state, restore_rng_state, save_model
from ..data import PatchDataset, Study, box_detail
from ..inputs import NORMALIZATION, stack_indices
from ..errors import TgdpetError
from ..models import DnCNN
from ..precision import amp_dtype, precision_name
from . import ddp
from ..config import LoopConfig
from .methods import Method
from .outputs import BEST, CONFIG, LAST, RunFolder

Echo = Callable[[str], None]


def detail_weights(target: torch.Tensor, detail_weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + detail_weight * d`` of a target batch (N, C, H, W).

    ``d = |t - mean of t's 5x5 in-plane box|`` (edges replicated) is the
    target's local detail in normalised units (the object's mean uptake is 1),
    the in-plane counterpart of :func:`tgdpet.data.detail_map`. Why: under
    heavy noise the MSE optimum shrinks a small hot lesion towards its
    surroundings (the conditional mean of an uncertain bump is a lower bump),
    which is the lesion uptake a PET reader loses. Paying more for errors
    where the target has lesions and edges moves that trade towards kept
    uptake, at some cost in noise; uniform tissue (d near 0) keeps weight 1.
    """
    if detail_weight == 0.0:
        return torch.ones_like(target)
    return 1.0 + detail_weight * box_detail(target)


#: Added to :func:`noise_power` before dividing by it, in squared units of the object's mean uptake (1 after
#: normalisation), so that a patch whose input equals its target cannot take a batch's weight. Measured inside
#: the body of the simulator's v1 training studies: 4.5e-3 (180 s, low BMI) to 0.21 (30 s, high BMI).
NOISE_POWER_FLOOR = 1e-4


def training_loss(
    out: torch.Tensor, target: torch.Tensor, detail_weight: float = 0.0, noisy: torch.Tensor | None = None
) -> torch.Tensor:
    """The squared error weighted by :func:`detail_weights`, divided by the weights' sum.

    With ``detail_weight`` 0 this is the MSE; otherwise the division keeps the
    loss on the MSE's scale, so the learning rate keeps its meaning. With the
    network's input ``noisy``, each patch's weights are also divided by its input's
    own noise power (:func:`noise_power`), so every patch counts by the share of
    its noise left, not by its absolute error, and the batch's mean power restores
    the MSE's scale: see :func:`noise_power` for why.
    """
    if detail_weight == 0.0 and noisy is None:
        return F.mse_loss(out, target)
    weight = detail_weights(target, detail_weight)
    scale = 1.0
    if noisy is not None:
        power = noise_power(noisy, target)
        weight = weight / (power + NOISE_POWER_FLOOR)
        scale = power.mean()
    return (weight * (out - target) ** 2).sum() / weight.sum() * scale


def noise_power(noisy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each patch's mean squared difference between input and target, shape (N, 1, 1, 1).

    The input's own noise (the target's is smaller: it has 3-20x the counts). Why
    divide by it: the absolute squared error is dominated by the noisiest inputs
    (high BMI, short scans), so a network trained on it, asked by
    ``detail_weight`` to keep lesions, removes only what little noise a clean
    low-BMI input has where it is cheap to leave (measured at detail weights 0-48:
    0.08-0.12x more of the low-BMI liver's noise left than of the high-BMI one's;
    docs/builtin-model.md, "What brought it back"). Divided, every count level and body size
    pays for the share of its noise left, which is what the liver CoV measures.
    """
    return ((noisy.float() - target) ** 2).mean(dim=(1, 2, 3), keepdim=True)


def learning_rate(cfg: LoopConfig, step: int) -> float:
    """Adam's learning rate at optimiser step ``step`` (0-based): constant (the paper), or cosine.

    ``cosine`` falls from ``lr`` to 0 over the run's steps as ``lr (1 + cos(pi step / total)) / 2``: the
    last epochs take small steps, so the final weights settle instead of wandering around the minimum
    at a constant rate (a constant-rate run's last epoch can be much worse than its best one).
    A function of the step alone, so a resumed run continues the same schedule.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.total_steps))


def worker_count(workers: int | None, device: torch.device) -> int:
    """DataLoader workers: the user's number, else none on CPU (cutting patches is cheap next to a
    CPU training step, and workers would take cores from it) and 4 on CUDA."""
    if workers is not None:
        return workers
    return 4 if device.type == "cuda" else 0


@torch.no_grad()
def calibrate_batchnorm(
    model: DnCNN,
    method: Method,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    env: ddp.DistEnv = ddp.DistEnv(),
) -> None:
    """Replace the running statistics of every BatchNorm in training mode by their mean over ``batches``.

    Why: the running averages (momentum 0.01, Keras' 0.99) blend the batch
    statistics of the last hundred or so steps, each taken with other weights.
    At Adam's 1e-3 the weights move enough over those steps that the averages
    no longer fit the saved weights: re-estimating the statistics of the last
    epoch of tgdpet 0.2's built-in recipe at its own weights ("precise
    BatchNorm", Wu & Johnson 2021) moved the mean uptake in the validation
    bodies from 1.013x to 0.999x the target's and its validation PSNR from
    45.3 to 51.4 dB. Each statistic becomes the mean of its per-batch values (``momentum=None``),
    averaged over the ranks. BatchNorms the method keeps in eval mode are not
    touched, and the method's ``after_step`` then restores what it keeps frozen
    (TGD's frozen channels), so their statistics stay bit-identical.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    try:
        for x, _ in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(_to_device(x, device, channels_last))
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
    for bn in norms:
        bn.running_mean.copy_(ddp.mean_over_ranks(bn.running_mean, env))
        bn.running_var.copy_(ddp.mean_over_ranks(bn.running_var, env))
    method.after_step()


@torch.no_grad()
def validate(
    model: DnCNN,
    studies: list[Study],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    max_slices: int = 0,
    detail_weight: float = 0.0,
    batch: int = 8,
) -> tuple[float, float]:
    """Mean loss and PSNR (dB) of the denoised centre slices against the target, over every input of ``studies``.

    The loss is the training loss (:func:`training_loss` with ``detail_weight``,
    the MSE when it is 0), so the best epoch is chosen by what training
    optimises; PSNR is always from the plain MSE. Whole slices, in normalised
    intensities (divided by the input's scale, like in training).
    ``max_slices`` > 0 takes that many evenly spaced slices per volume.
    PSNR's peak is the normalised target's maximum. The model is left in
    eval mode.
    """
    model.eval()
    half = model.config.in_slices // 2
    losses, psnrs = [], []
    for study in studies:
        depth = study.shape[0]
        zs = np.arange(depth)
        if 0 < max_slices < depth:
            zs = np.unique(np.linspace(0, depth - 1, max_slices).round().astype(np.int64))
        for inp, scale in zip(study.inputs, study.scales):
            err = weighted_err = total_weight = 0.0
            for start in range(0, len(zs), batch):
                chunk = zs[start : start + batch]
                x = torch.from_numpy(inp[stack_indices(chunk, depth, model.config.in_slices)] / np.float32(scale))
                t = torch.from_numpy(study.target[chunk] / np.float32(scale)).to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = model(x.to(device))[:, half].float()
                squared = (out - t) ** 2
                weight = detail_weights(t[:, None], detail_weight)[:, 0]
                err += float(squared.sum())
                weighted_err += float((weight * squared).sum())
                total_weight += float(weight.sum())
            mse = err / (len(zs) * study.shape[1] * study.shape[2])
            peak = float(study.target.max()) / scale
            losses.append(weighted_err / total_weight)
            psnrs.append(10 * math.log10(peak**2 / mse) if mse > 0 and peak > 0 else math.inf)
    return float(np.mean(losses)), float(np.mean(psnrs))


@dataclass
class Progress:
    """Where a run stands; saved with the training state, restored by ``--resume``."""

    step: int = 0
    patches_seen: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    # Sums over the steps of the current epoch so far, so that an epoch split by
    # a resume reports the same training loss as an uninterrupted one.
    epoch_loss: float = 0.0
    epoch_penalty: float = 0.0
    epoch_steps: int = 0

    def start_epoch(self) -> None:
        self.epoch_loss, self.epoch_penalty, self.epoch_steps = 0.0, 0.0, 0

    def add_epoch(self, row: dict, metric: float | None) -> bool:
        """Record an epoch's metrics row (replacing a truncated earlier row of the same epoch); True if best so far.

        ``metric`` is None for an epoch that was not validated: it cannot be the best.
        """
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        improved = metric is not None and (self.best_metric is None or metric < self.best_metric)
        if improved:
            self.best_metric, self.best_epoch = metric, row["epoch"]
        return improved

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


@dataclass
class Outputs:
    """Where and what rank 0 writes for a run; ``run=None`` writes nothing (n2n-online's adaptation)."""

    run: RunFolder | None = None
    preset: str | None = None
    base_history: list = field(default_factory=list)  # masks of earlier TGD rounds of the starting model
    provenance: dict = field(default_factory=dict)  # command, data, base model: merged into every model's record
    # Written with the first epoch's files, not before: a run stopped earlier leaves no folder to --resume.
    config_yaml: str = ""
    inputs: dict = field(default_factory=dict)  # paths and SHA-256 of DATA and MODEL, kept for --resume to compare


@dataclass
class FitResult:
    """How a run ended; ``model`` holds the last weights (the inner module, never a DDP wrapper)."""

    model: DnCNN
    progress: Progress
    selected_by: str  # the metric that chose best.safetensors: val_loss, or train_loss without val studies
    method: dict  # Method.summary(): what was retrained
    precision: str  # precision_name of the autocast dtype the steps ran in


def _batches(
    patches: PatchDataset, indices: range, batch_size: int, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """The epoch's patches ``indices`` in batches of ``batch_size`` (the dataset draws a whole batch at once)."""
    return torch.utils.data.DataLoader(
        patches,
        batch_size=batch_size,
        sampler=indices,
        drop_last=True,
        collate_fn=PatchDataset.collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def _to_device(t: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    t = t.to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _provenance(
    outputs: Outputs, cfg: LoopConfig, progress: Progress, summary: dict, device: torch.device, env: ddp.DistEnv,
    dtype: torch.dtype | None,
) -> dict:
    """What a saved model records about how it was made, over the workflow's own ``outputs.provenance``."""
    return {
        **outputs.provenance,
        "config": cfg.to_dict(),
        "method": summary,
        "epochs": progress.history[-1]["epoch"],
        "steps": progress.step,
        "patches_seen": progress.patches_seen,
        "wall_time_s": round(progress.elapsed_s, 3),
        "device": str(device),
        "precision": precision_name(dtype),
        "world_size": env.world_size,
        "tgdpet_version": __version__,
        "torch_version": torch.__version__,
    }


def _describe(summary: dict, cfg: LoopConfig, device: torch.device, env: ddp.DistEnv, dtype) -> str:
    return (
        f"{summary['method']}: training {summary['retrained_parameters']:,} of {summary['total_parameters']:,} "
        f"parameters ({100 * summary['retrained_fraction']:.1f} %) on {device}"
        + (f" x {env.world_size} processes" if env.is_distributed else "")
        + f", {precision_name(dtype)}"
        + f", {cfg.total_steps} steps of {cfg.batch_size} patches"
    )


def _epoch_line(row: dict, total_epochs: int, improved: bool) -> str:
    val = f"  val {row['val_loss']:.4e} ({row['val_psnr']:.2f} dB)" if row["val_loss"] is not None else ""
    return (
        f"epoch {row['epoch']}/{total_epochs}  step {row['step']}  train {row['train_loss']:.4e}{val}"
        f"  {row['patches_per_s']:.1f} patches/s" + ("  (best)" if improved else "")
    )


@dataclass
class Step:
    """One optimiser step on a batch: forward under autocast, loss plus the method's penalty, backward, update.

    Holds what every step of a run shares (the network as trained, possibly
    DDP-wrapped; the optimiser; the fp16 loss scaler, if any), so that
    :func:`fit` reads as the loop it is.
    """

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    method: Method
    cfg: LoopConfig
    device: torch.device
    dtype: torch.dtype | None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Train on ``(x, y)`` as step ``step`` (0-based); returns the detached total loss and penalty."""
        cfg = self.cfg
        x, y = _to_device(x, self.device, cfg.channels_last), _to_device(y, self.device, cfg.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.net(x)
        loss = training_loss(out.float(), y, cfg.detail_weight, x if cfg.noise_relative_loss else None)
        penalty = self.method.penalty()
        total = loss if penalty is None else loss + penalty
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.method.after_step()
        return total.detach(), None if penalty is None else penalty.detach()


def _train_epoch(
    step: Step, batches: Iterable, steps: int, progress: Progress, env: ddp.DistEnv, epoch: int, show: bool
) -> None:
    """``steps`` steps over ``batches``, counted into ``progress``; a non-finite loss stops the run here."""
    cfg = step.cfg
    with tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.total_epochs}", leave=False, disable=not show) as bar:
        for x, y in batches:
            total, penalty = step(x, y, progress.step)
            value = float(ddp.mean_over_ranks(total, env))
            if not math.isfinite(value):
                raise TgdpetError(
                    f"training diverged: the loss became {value} at step {progress.step + 1}; nothing of epoch "
                    f"{epoch + 1} was saved. Lower --lr, try --no-amp, or check the training images."
                )
            progress.epoch_loss += value
            if penalty is not None:
                progress.epoch_penalty += float(ddp.mean_over_ranks(penalty, env))
            progress.epoch_steps += 1
            progress.step += 1
            progress.patches_seen += cfg.batch_size
            bar.update()
            bar.set_postfix(loss=f"{value:.3e}", refresh=False)


def _validates(cfg: LoopConfig, epoch: int, step: int) -> bool:
    """Whether the epoch (0-based) that ended at global ``step`` is validated: every ``val_every``-th, and the last."""
    return (epoch + 1) % cfg.val_every == 0 or step >= cfg.total_steps


def _epoch_row(
    progress: Progress, epoch: int, patches_per_s: float, optimizer: torch.optim.Optimizer, method: Method
) -> dict:
    """The epoch's line of metrics.jsonl (validation figures filled in by the caller)."""
    row = {
        "epoch": epoch + 1,
        "step": progress.step,
        "patches_seen": progress.patches_seen,
        "train_loss": progress.epoch_loss / progress.epoch_steps,
        "val_loss": None,
        "val_psnr": None,
        "lr": optimizer.param_groups[0]["lr"],
        "time_s": round(progress.elapsed_s, 3),
        "patches_per_s": round(patches_per_s, 2),
    }
    if method.has_penalty:
        row["penalty"] = progress.epoch_penalty / progress.epoch_steps
    return row


def fit(
    model: DnCNN,
    method: Method,
    patches: PatchDataset,
    cfg: LoopConfig,
    *,
    device: torch.device,
    env: ddp.DistEnv = ddp.DistEnv(),
    val: list[Study] | tuple = (),
    outputs: Outputs | None = None,
    state: dict | None = None,
    progress_bar: bool = True,
    echo: Echo | None = None,
) -> FitResult:
    """Train ``model`` (on ``device``, with ``method`` set up on it) until ``cfg.total_steps`` steps are done.

    ``patches`` yields this rank's share of each epoch: ``steps_per_epoch``
    batches of ``batch_size / world_size`` patches. ``state`` is the training
    state an earlier run of the same settings saved: training continues after
    its last step and ends with the weights an uninterrupted run would have.
    """
    outputs = outputs or Outputs()
    say = echo if (echo is not None and env.is_main) else (lambda _msg: None)
    dtype = amp_dtype(cfg.amp, device, model.config)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    progress = Progress()
    if state is not None:
        model.load_state_dict(state["model"])
        progress = Progress.from_state(state["progress"])
        restore_rng_state(state["rng"])
    net = ddp.wrap(model, env, device)
    optimizer = torch.optim.Adam(method.trainable(), lr=cfg.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    selected_by = "val_loss" if val else "train_loss"
    summary = method.summary()
    say(_describe(summary, cfg, device, env, dtype))

    def training_state() -> dict:
        return {
            "config": cfg.to_dict(),
            "progress": progress.to_state(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng_state(),
            "method": method.state_dict(),
            "inputs": outputs.inputs,
        }

    rank_batch = cfg.batch_size // env.world_size
    workers = worker_count(cfg.workers, device)
    step = Step(net, optimizer, scaler, method, cfg, device, dtype)
    while progress.step < cfg.total_steps:
        epoch, skip = divmod(progress.step, cfg.steps_per_epoch)
        steps = min(cfg.steps_per_epoch, cfg.total_steps - epoch * cfg.steps_per_epoch) - skip
        patches.set_epoch(epoch)
        # A resumed run picks up mid-epoch.
        loader = _batches(patches, range(skip * rank_batch, len(patches)), rank_batch, workers, device)
        if skip == 0:
            progress.start_epoch()
        method.set_train_mode()
        t0 = time.perf_counter()
        _train_epoch(step, itertools.islice(loader, steps), steps, progress, env, epoch, progress_bar and env.is_main)
        if cfg.bn_batches:  # the epoch's first patches again, at its final weights
            first = range(min(cfg.bn_batches * rank_batch, len(patches)))
            calibration = _batches(patches, first, rank_batch, workers, device)
            calibrate_batchnorm(
                model, method, calibration, device=device, dtype=dtype, channels_last=cfg.channels_last, env=env
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t0
        progress.elapsed_s += epoch_time
        row = _epoch_row(progress, epoch, steps * cfg.batch_size / epoch_time, optimizer, method)
        if val and env.is_main and _validates(cfg, epoch, progress.step):
            row["val_loss"], row["val_psnr"] = validate(
                model, val, device=device, dtype=dtype, max_slices=cfg.val_max_slices, detail_weight=cfg.detail_weight
            )
        # Only rank 0 validates; the other ranks never save, so their notion of "best" does not matter.
        improved = progress.add_epoch(row, row[selected_by] if env.is_main else row["train_loss"])
        if env.is_main and outputs.run is not None:
            prov = _provenance(outputs, cfg, progress, summary, device, env, dtype)
            _write_epoch(outputs, model, method, progress, prov, selected_by if improved else None, training_state)
        ddp.barrier(env)
        say(_epoch_line(row, cfg.total_epochs, improved))
    return FitResult(
        model=model, progress=progress, selected_by=selected_by, method=summary, precision=precision_name(dtype)
    )


def _write_epoch(
    outputs: Outputs,
    model: DnCNN,
    method: Method,
    progress: Progress,
    provenance: dict,
    new_best: str | None,
    training_state: Callable[[], dict],
) -> None:
    """Rank 0's end-of-epoch files, the training state last, so a crash resumes from a complete epoch.

    ``new_best`` names the metric when this epoch is the best so far (then
    best.safetensors is replaced too).
    """
    run = outputs.run
    record = {"preset": outputs.preset, "normalization": NORMALIZATION, **method.record(outputs.base_history)}
    run.write_text(CONFIG, outputs.config_yaml)
    save_model(run.file(LAST), model, provenance=provenance, **record)
    if new_best:
        best = {**provenance, "selected_by": new_best, new_best: progress.best_metric}
        save_model(run.file(BEST), model, provenance=best, **record)
    run.write_metrics(progress.history)
    run.plot(progress.history)
    run.save_state(training_state())
