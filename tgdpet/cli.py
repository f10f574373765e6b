"""The ``tgdpet`` command line: a thin layer over the library API.

Each command parses options, calls one library function, and prints. Errors a
user can cause arrive as :class:`~tgdpet.errors.TgdpetError` and are printed
as one sentence on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import sys
import typing

import click

from . import __version__
from .config import FinetuneConfig, N2NConfig, TrainConfig, command_settings, resolve_config
from .errors import TgdpetError
from .precision import PRECISIONS


class _Group(click.Group):
    """A click group that turns user errors into one line and exit status 2.

    Both kinds of user error end the same way: a :class:`TgdpetError` from the
    library, and click's own usage errors (a bad option value, a missing
    path), which click would otherwise print as four lines of usage and hint.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            _usage_error(ctx, e)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            _usage_error(ctx, e)
        except TgdpetError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            resumable = ctx.invoked_subcommand in ("train", "tgd-finetune")
            click.echo(
                "Interrupted; outputs are written whole or not at all"
                + (" (continue the run with --resume)." if resumable else "; run the command again to finish."),
                err=True,
            )
            ctx.exit(130)


#: Every MODEL and --model is a file or a built-in model's name; the library resolves it (tgdpet.builtin).
MODEL = click.Path(dir_okay=False)
MODEL_HELP = "A tgdpet model file (.safetensors) or a built-in model's name (tgdpet models lists them)"


def _usage_error(ctx: click.Context, e: click.UsageError) -> None:
    """Print a click usage error as one line that names the command's --help, and exit 2."""
    where = (e.ctx or ctx).command_path
    click.echo(f"Error: {e.format_message()} See '{where} --help'.", err=True)
    ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tgdpet")
def main() -> None:
    """Denoise PET images with a DnCNN, and adapt it with Targeted Gradient Descent.

    \b
    Typical use:
      tgdpet simulate data/                      # a simulated dataset to try things on
      tgdpet train data/v1 --out runs/v1         # train a denoiser
      tgdpet score-kse runs/v1/best.safetensors --phi 0.3
      tgdpet tgd-finetune runs/v1/best.safetensors data/v2 --phi 0.3 --out runs/tgd
      tgdpet n2n-online MODEL half1.nii half2.nii --phi 0.4 -o denoised.nii
      tgdpet denoise study.nii                   # uses the built-in pretrained model
    """


def _parse_phis(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TgdpetError(f"--phis must be comma-separated numbers such as 0.3,0.4,0.5, got {text!r}.") from None


def _print_kse_table(summary: dict) -> None:
    click.echo(
        f"KSE threshold phi = {summary['phi']:g}; conv1: {summary['conv1']}; read kernels: {summary['read_kernels']}; "
        "the last layer's channels frozen."
    )
    header = f"{'layer':<7}{'channels':>9}{'meaningless':>13}{'retrained params':>18}{'% of network':>14}"
    click.echo(header)
    click.echo("-" * len(header))
    for layer in summary["layers"]:
        meaningless = "-" if layer["meaningless_channels"] is None else str(layer["meaningless_channels"])
        click.echo(
            f"{layer['layer']:<7}{layer['channels']:>9}{meaningless:>13}{layer['retrained_parameters']:>18,}"
            f"{100 * layer['retrained_fraction_of_network']:>13.1f}%"
        )
    total = summary["total"]
    click.echo("-" * len(header))
    meaningless = sum(layer["meaningless_channels"] or 0 for layer in summary["layers"])
    channels = sum(layer["channels"] for layer in summary["layers"])
    click.echo(
        f"{'total':<7}{channels:>9}{meaningless:>13}{total['retrained_parameters']:>18,}"
        f"{100 * total['retrained_fraction']:>13.1f}%   of {total['parameters']:,} parameters"
    )


def _print_drop_table(results: list[dict]) -> None:
    click.echo("\nKernel-drop study (paper Fig. 4): meaningless kernels zeroed at inference")
    click.echo(f"{'phi':>6}{'parameters dropped':>21}{'output change (rel. RMS)':>27}")
    for r in results:
        change = "-" if r["output_change"] is None else f"{r['output_change']:.3e}"
        click.echo(f"{r['phi']:>6.2f}{100 * r['fraction_dropped']:>20.1f}%{change:>27}")
    if all(r["output_change"] is None for r in results):
        click.echo("(pass --volume to measure how much the denoised output changes)")


@main.command("score-kse")
@click.argument("model", type=MODEL)
@click.option(
    "--phi", type=float, default=0.3, show_default=True, help="KSE threshold: channels scoring below it are retrained."
)
@click.option(
    "--conv1",
    type=click.Choice(["freeze", "retrain"]),
    default="freeze",
    show_default=True,
    help="Freeze conv1 entirely (as tgd-finetune does by default), or count its meaningless kernels as retrained.",
)
@click.option(
    "--read-kernels",
    type=click.Choice(["retrain", "freeze"]),
    default="retrain",
    show_default=True,
    help="Count the kernels of frozen channels (and of the last layer) that read a retrained map as retrained, "
    "as tgd-finetune does by default, or not (the paper's masks).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
@click.option("--drop", is_flag=True, help="Run the kernel-drop study (paper Fig. 4) over --phis.")
@click.option("--phis", default="0.3,0.4,0.5,0.6", show_default=True, help="Thresholds for --drop.")
@click.option(
    "--volume",
    type=click.Path(exists=True),
    help="A NIfTI file or DICOM series on which --drop measures the output change (implies --drop).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (used by --drop).")
def score_kse(model, phi, conv1, read_kernels, as_json, drop, phis, volume, device) -> None:
    """Score MODEL's feature maps with KSE and show which kernels TGD would retrain at --phi."""
    import json

    from .builtin import resolve_model
    from .checkpoint import load_model
    from .data import read_canonical
    from .drop import drop_study
    from .infer import denoise_array
    from .kse import check_phi
    from .runtime import resolve_device
    from .tgd import retrain_summary

    phi = check_phi(phi)
    phi_list = [check_phi(p) for p in _parse_phis(phis)] if (drop or volume) else []
    record = load_model(resolve_model(model), device=resolve_device(device) if phi_list else "cpu")
    summary = retrain_summary(record.model, phi, conv1, read_kernels)
    if phi_list:
        vol, dev = (read_canonical(volume) if volume else None), next(record.model.parameters()).device
        denoise = (lambda net: denoise_array(net, vol, device=dev, precision="fp32")) if volume else None
        summary["drop"] = [r.to_dict() for r in drop_study(record.model, phi_list, denoise)[1]]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_kse_table(summary)
    if phi_list:
        _print_drop_table(summary["drop"])


def _stacked(options: list):
    """One decorator applying ``options`` in order (the first appears first in --help)."""

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _shown(value, flag: str | None = None) -> str:
    """A default as the help shows it; for a switch, the side that is on (``--revive/--no-revive``: no-revive)."""
    if flag and isinstance(value, bool):
        return flag.split("/")[0 if value else 1].lstrip("-")
    return f"{value:g}" if isinstance(value, float) else ("none" if value is None else str(value))


def config_options(cls, command: str):
    """The command's ``--config`` and one option per setting of its config dataclass (:func:`config.setting`).

    Help text, choices and the default shown all come from the dataclass, so
    each default is written once. The options default to None: a setting left
    out keeps the value of ``--config``'s file, or else the dataclass's.
    """
    from .configs import names_for

    hints = typing.get_type_hints(cls)
    options = [
        click.option("--config", "config",
                     help=f"YAML settings: a shipped config by name ({', '.join(names_for(command))}) or a file; "
                     "command-line options override it  [default: none, the defaults shown here]"),
    ]  # fmt: skip
    for f in command_settings(cls):
        meta = f.metadata
        text = f"{meta['help']}  [default: {meta['shown'] or _shown(f.default, meta['flag'])}]"
        if meta["flag"]:
            options.append(click.option(meta["flag"], f.name, default=None, help=text))
            continue
        kind = click.Choice(meta["choices"]) if meta["choices"] else next(
            t for t in (int, float, str) if t in typing.get_args(hints[f.name]) or t is hints[f.name]
        )  # fmt: skip
        options.append(click.option("--" + f.name.replace("_", "-"), f.name, type=kind, help=text))
    options.append(click.option("--no-progress", is_flag=True, help="No progress bars (for logs)."))
    return _stacked(options)


def _settings(cls, options: dict) -> dict:
    """The command-line values of ``cls``'s settings (None where not given)."""
    return {f.name: options[f.name] for f in command_settings(cls)}


def _run_config(cls, config, out, resume: bool, **options):
    """Settings of a train/tgd-finetune run: a resumed run starts from its own config.yaml.

    A --config file inside --out is refused for a new run: the run's own files would replace it.
    """
    from pathlib import Path

    if config is None and resume and (Path(out) / "config.yaml").is_file():
        config = Path(out) / "config.yaml"
    elif config is not None and not resume and Path(config).is_file():
        if Path(out).resolve() in Path(config).resolve().parents:
            raise TgdpetError(
                f"--config {config} lies in --out {out}, whose files a new run replaces; copy it out of that folder "
                "first (or continue that run with --resume)."
            )
    return resolve_config(cls, config, **options)


def _command_line() -> str:
    import shlex

    return shlex.join(["tgdpet", *sys.argv[1:]])


def _report_run(result, out) -> None:
    """The end of a training run, said once (by rank 0 under torchrun)."""
    from .train.ddp import env_from_environ

    if not env_from_environ().is_main:
        return
    p = result.progress
    best = f"best epoch {p.best_epoch} ({result.selected_by} {p.best_metric:.4e})" if p.best_epoch else "no epoch run"
    click.echo(f"Done: {p.step} steps, {p.patches_seen:,} patches in {p.elapsed_s:.0f} s; {best}.")
    click.echo(f"Models, config.yaml, metrics.jsonl and loss.png are in {out}.")


@main.command("train")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "-o", "--out", required=True, type=click.Path(file_okay=False), help="Run folder for models, metrics and state."
)
@config_options(TrainConfig, "train")
@click.option(
    "--resume", is_flag=True,
    help="Continue the run in --out from its last complete epoch (settings default to its config.yaml).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out.")
def train_command(data, out, config, no_progress, resume, overwrite, **options) -> None:
    """Train a DnCNN from scratch on the train studies of DATA (a manifest or its folder).

    \b
    Multi-GPU:
      torchrun --nproc_per_node N -m tgdpet.cli train DATA --out RUN
    """
    from .train import train

    cfg = _run_config(TrainConfig, config, out, resume, **_settings(TrainConfig, options))
    result = train(
        data, out, cfg, resume=resume, overwrite=overwrite, progress_bar=not no_progress,
        echo=click.echo, command=_command_line(),
    )  # fmt: skip
    _report_run(result, out)


@main.command("tgd-finetune")
@click.argument("model", type=MODEL)
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "-o", "--out", required=True, type=click.Path(file_okay=False), help="Run folder for models, metrics and state."
)
@config_options(FinetuneConfig, "tgd-finetune")
@click.option(
    "--resume", is_flag=True,
    help="Continue the run in --out from its last complete epoch (settings default to its config.yaml).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out.")
def tgd_finetune_command(model, data, out, config, no_progress, resume, overwrite, **options) -> None:
    """Adapt MODEL to the train studies of DATA with TGD (or a baseline --method).

    The saved models keep the TGD masks, appended to MODEL's mask history:
    fine-tuning the result again is TGD^2. Prints the fraction of parameters
    retrained.

    \b
    Multi-GPU:
      torchrun --nproc_per_node N -m tgdpet.cli tgd-finetune MODEL DATA --out RUN
    """
    from .train import finetune

    cfg = _run_config(FinetuneConfig, config, out, resume, **_settings(FinetuneConfig, options))
    result = finetune(
        model, data, out, cfg, resume=resume, overwrite=overwrite, progress_bar=not no_progress,
        echo=click.echo, command=_command_line(),
    )  # fmt: skip
    _report_run(result, out)


@main.command("n2n-online")
@click.argument("model", type=MODEL)
@click.argument("half1", type=click.Path(exists=True))
@click.argument("half2", type=click.Path(exists=True))
@click.option(
    "-o", "--out", required=True, type=click.Path(), help="Denoised study (.nii, .nii.gz, or a DICOM folder)."
)
@click.option("--full", type=click.Path(exists=True),
              help="The full-count study to denoise  [default: the mean of the halves]")
@click.option("--save-model", type=click.Path(dir_okay=False), help="Also keep the adapted model here (.safetensors).")
@click.option("--skip-halves-check", is_flag=True,
              help="Use halves that fail the one-scan check (correlation and mean uptake); very low-count halves "
              "of one scan can.")
@config_options(N2NConfig, "n2n-online")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def n2n_online_command(
    model, half1, half2, out, full, save_model, skip_halves_check, config, no_progress, overwrite, **options
) -> None:
    """Adapt MODEL to one study with Noise2Noise (HALF1 <-> HALF2), then denoise the study.

    HALF1 and HALF2 are two reconstructions of disjoint, equal-count halves
    of the study's data (activity images, Bq/mL or SUV). Without --full the
    full study is their mean: each half already estimates the full activity.
    Halves that cannot be one scan (other grid, weakly correlated, other mean
    uptake) are refused. The adapted weights are those after the last step:
    with one study there is no held-out data to pick an epoch by.
    """
    from .train import n2n_online

    cfg = resolve_config(N2NConfig, config, **_settings(N2NConfig, options))
    result = n2n_online(
        model, half1, half2, out, cfg, full=full, skip_halves_check=skip_halves_check, save_model_path=save_model,
        overwrite=overwrite, progress_bar=not no_progress, echo=click.echo, command=_command_line(),
    )  # fmt: skip
    kept = f" and {result.model_path}" if result.model_path else ""
    click.echo(f"Wrote {result.written.path} ({result.written.note()}){kept}.")


@main.command("denoise")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_path", type=MODEL, help=f"{MODEL_HELP}  [default: the built-in pretrained model]")
@click.option("-o", "--out", type=click.Path(),
              help="Output for a single INPUT: .nii or .nii.gz (any input), or a DICOM folder (DICOM inputs).")
@click.option("--out-dir", type=click.Path(file_okay=False),
              help="Folder for the outputs  [default: next to each input]")
@click.option("--frame", type=click.IntRange(min=0),
              help="Denoise only this time frame of a dynamic input (4-D NIfTI, dynamic DICOM, ECAT); 0 is the first  "
              "[default: none: every frame of a 4-D NIfTI or dynamic DICOM series, into one output]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 on CPUs with bf16 units and on CUDA (fp16 on older GPUs), else fp32.")
@click.option("--batch-slices", type=click.IntRange(min=1), help="Slices per forward pass  [default: per device]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (faster after a slow first call).")
@click.option("--tta", is_flag=True, help="Average over the 8 in-plane flips/transposes (8x slower, slightly less noise).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
def denoise_command(
    inputs, model_path, out, out_dir, frame, device, precision, batch_slices, compile_, tta, overwrite, no_progress
) -> None:
    """Denoise PET volumes: NIfTI files, DICOM series folders, study trees or PET-BIDS datasets.

    Results keep the input's format, geometry and metadata; the default output
    is <name>_denoised.nii.gz (or <folder>_denoised/ for DICOM) next to each
    input. A 4-D NIfTI file or a dynamic DICOM series is denoised frame by
    frame into one output of its kind (--frame N picks one frame instead). Each image is denoised on the
    working grid that suits its voxels and noise grain (its own, the model's, one between, or one a step
    finer); each output's line names that grid, and reports and sidecars record it. A study tree (a
    folder with series in subfolders, or NIfTI files) is denoised PET series by PET series into
    <folder>_denoised/, other series (and earlier results) skipped with a
    reason, and a report written there (tgdpet-report.json). A PET-BIDS
    dataset (a folder with dataset_description.json and sub-* folders) is
    denoised into the derivative dataset <dataset>/derivatives/tgdpet, with
    desc-denoised file names and sidecars. The exit status is 3 if a tree or
    dataset had images skipped.
    """
    from .batch import SKIPPED_EXIT
    from .denoise import denoise_inputs

    skipped = denoise_inputs(
        inputs, out=out, out_dir=out_dir, model_path=model_path, frame=frame, overwrite=overwrite,
        progress=not no_progress, echo=click.echo, warn=lambda message: click.echo(message, err=True),
        device=device, precision=precision, batch_slices=batch_slices, compile=compile_, tta=tta,
    )  # fmt: skip
    if skipped:  # done, but not everything: scripts must be able to tell
        click.echo(
            f"{skipped} image(s) skipped, each with its reason in tgdpet-report.json (exit status {SKIPPED_EXIT})."
        )
        click.get_current_context().exit(SKIPPED_EXIT)


@main.command("inspect")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--frame", type=click.IntRange(min=0),
              help="Time frame of dynamic inputs to describe  [default: none; a dynamic input is reported by its "
              "number of frames, with a request for --frame N]")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
def inspect_command(inputs, frame, as_json) -> None:
    """Describe every PET series, NIfTI or ECAT file in INPUTS (files or folder trees), from headers.

    Per series: modality, units, slices, spacing, orientation, RescaleSlope
    range, whether SUV can be computed (and why not), and the reason tgdpet
    would refuse it, if any.
    """
    import json

    from .io.inspect import inspect_inputs

    found = inspect_inputs(list(inputs), frame=frame)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for info in found:
        click.echo(_inspect_line(info))


def _inspect_line(info: dict) -> str:
    """One series of ``tgdpet inspect`` as a few readable lines."""
    head = f"{info['path']} [{info['format']}]"
    if info.get("description"):
        head += f" '{info['description']}'"
    if not info["readable"]:
        return f"{head}\n  not readable: {info['problem']}"
    z, y, x = info["shape_zyx"]
    spacing = " x ".join(f"{s:g}" for s in info["spacing_mm"])
    slopes = info.get("slope_range")
    lines = [
        head,
        f"  {info['modality'] or 'modality not recorded'}, units {info['units']}"
        + ("" if info.get("units_recorded", True) else " (assumed: the file records none)")
        + f", {z} slices of {y} x {x}, spacing {spacing} mm, "
        f"orientation {info['orientation']}" + (f", {info['frames']} time frames" if info.get("frames", 1) > 1 else ""),
        _storage_line(info["format"], slopes) + _syntax_text(info.get("transfer_syntax")),
        _suv_line(info),
    ]
    return "\n".join(lines)


def _storage_line(fmt: str, slopes: list[float] | None) -> str:
    """How the values are stored, in the format's own terms (DICOM RescaleSlope, NIfTI scl_slope)."""
    if slopes is None:
        return "  stored as floating point"
    if fmt == "dicom":
        return f"  RescaleSlope {slopes[0]:g} to {slopes[1]:g}"
    return f"  scl_slope {slopes[0]:g}"


def _syntax_text(syntaxes: list[str] | None) -> str:
    """A DICOM series' transfer syntax (or syntaxes, where its files differ), after its storage line."""
    if not syntaxes:
        return ""
    return f"; transfer syntax{'es' if len(syntaxes) > 1 else ''} " + ", ".join(syntaxes)


def _suv_line(info: dict) -> str:
    """The SUV factor with its unit, or why there is none."""
    if info["suv_factor"] is None:
        return f"  SUV: not computable ({info['suv_problem']})"
    if info["units"] == "SUV":
        return "  values are SUV (body weight) already"
    return f"  SUV factor {info['suv_factor']:.6g} (SUV per Bq/mL: body weight in g / decay-corrected dose in Bq)"


def _parse_named_models(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` pairs of --model into an ordered name -> path dict (PATH may name a built-in model)."""
    from .builtin import resolve_model

    models: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise TgdpetError(f"--model {value!r} must be NAME=PATH, e.g. --model v1-net=runs/v1/best.safetensors.")
        if name in models:
            raise TgdpetError(f"--model names {name!r} twice; give every model its own name.")
        try:
            resolved = resolve_model(path)
        except TgdpetError as e:
            raise TgdpetError(f"--model {name}: {e}") from None
        if not resolved.is_file():
            problem = "is a folder" if resolved.is_dir() else "does not exist"
            raise TgdpetError(f"--model {name}: model file {path} {problem}; pass a tgdpet model file (.safetensors).")
        models[name] = str(resolved)
    return models


@main.command("evaluate")
@click.argument("data", type=click.Path())
@click.option("--model", "model_specs", multiple=True, metavar="NAME=PATH",
              help="A model file (or a built-in model's name) to evaluate under a row name; repeat for several  "
              "[default: the built-in pretrained model, under its name]")
@click.option("--study", "study_id", help="Evaluate this study only  [default: every study with split 'test']")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results here as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Network precision; fp32 keeps the figures free of rounding (bf16 moves outputs by ~0.2 %).")
@click.option("--dilation", type=click.IntRange(min=0), default=2, show_default=True,
              help="Voxels around catheter and bladder included in the hallucination score.")
@click.option("--tta", is_flag=True, help="Score each model as denoise --tta runs it (8 in-plane flips averaged).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
def evaluate_command(
    data, model_specs, study_id, json_out, device, precision, dilation, tta, overwrite, no_progress
) -> None:
    """Score models on the test studies of DATA (a manifest.json or a folder holding one).

    \b
    Figures (paper supplement, eq. 6-7): lesion ensemble bias and liver CoV
    over a study's realisations, the liver's ensemble bias (the reference
    region of PERCIST reads), lesion bias against the phantom truth,
    PSNR and SSIM against the study's target, and a hallucination score
    around catheter and bladder. The row "input" scores the images before
    denoising.
    """
    from .builtin import pretrained_model_path
    from .checkpoint import load_model
    from .data import load_manifest
    from .evaluate import check_results_path, evaluate_manifest, format_table, save_results

    models = _parse_named_models(model_specs or (f"{pretrained_model_path().stem}={pretrained_model_path()}",))
    if json_out:  # refuse before the long part, not after it; a bad manifest or model is named first
        manifest = load_manifest(data)
        for path in models.values():
            load_model(path).check_normalization(path)
        check_results_path(json_out, manifest, overwrite)
    results = evaluate_manifest(
        data, models, study_id=study_id, device=device, precision=precision, dilation=dilation, tta=tta,
        progress=not no_progress,
    )  # fmt: skip
    click.echo("\n\n".join(format_table(study) for study in results["studies"]))
    if json_out:
        click.echo(f"Wrote {save_results(results, json_out, overwrite=overwrite)}.")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option value as a tuple of names; ``none`` (or nothing) is empty."""
    names = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    return () if names == ("none",) else names


def _seconds(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TgdpetError(f"--levels must be comma-separated seconds such as 30,60,120, got {text!r}.") from None


@main.command("simulate")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--studies", "n_studies", type=int, default=8, show_default=True,
              help="Training studies (every fifth is a validation study); 0 for a set of test studies only.")
@click.option("--bmi", default="low,normal,high", show_default=True,
              help="BMI classes the training studies cycle through; one test study per class.")
@click.option("--size", type=int, default=128, show_default=True, help="Pixels per row (512 mm field of view).")
@click.option("--slices", type=int, default=144, show_default=True, help="Slices, neck to pelvis (576 mm).")
@click.option("--protocols", default="v1,v2", show_default=True,
              help="Reconstruction protocols, one manifest each: v1, v2 (the paper's), nopsf, sharp, smooth, nofilter.")
@click.option("--levels", default="30,45,60,90,120,180", show_default=True,
              help="Count levels of the noisy inputs, in seconds of the 600 s scan.")
@click.option("--lesions/--no-lesions", default=True, show_default=True,
              help="Random hot lesions in the training studies.")
@click.option("--dense-lesions", is_flag=True,
              help="40-60 random lesions a training study instead of 4-10: networks keep more lesion "
                   "uptake at high noise (README).")
@click.option("--ood", default="catheter,bladder", show_default=True,
              help="Features of the out-of-distribution study (catheter, bladder), or 'none'.")
@click.option("--test-study/--no-test-study", default=True, show_default=True,
              help="Test studies with an inserted 20 mm liver tumour.")
@click.option("--realisations", type=int, default=10, show_default=True,
              help="Disjoint 60 s realisations of each test study's 600 s scan.")
@click.option("--halves", is_flag=True,
              help="Also write two disjoint 60 s halves of a 120 s scan for the training studies "
                   "(the OOD study always has them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole dataset.")
@click.option("--noise-seed", type=int,
              help="Scan the same patients again: the phantoms come from --seed, the counts' noise from this "
                   "(a test-retest repeat of a dataset).  [default: --seed]")
@click.option("--dicom", is_flag=True, help="Write the PET images as DICOM series instead of NIfTI.")
@click.option("--bids", is_flag=True,
              help="Write a PET-BIDS dataset instead: a static 60 s scan per --bmi class and a dynamic 0-62 min "
                   "study (22 frames), reconstructed with the first of --protocols, with their truth in "
                   "derivatives/phantom.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def simulate_command(out, n_studies, bmi, size, slices, protocols, levels, lesions, dense_lesions, ood, test_study,
                     realisations, halves, seed, noise_seed, dicom, bids, device, overwrite, no_progress) -> None:
    """Simulate a whole-body PET dataset into the folder OUT.

    \b
    Per study: a 600 s target and noisy inputs at the count levels, for each
    protocol (v1: coarse noise, v2: finer noise, same counts), a label map
    and the phantom truth. Writes OUT/v1/manifest.json and OUT/v2/manifest.json
    for train, tgd-finetune, n2n-online and evaluate.
    """
    from .simulate import SimulationConfig, StudySpec, cohort, write_dataset

    if bids:
        from .simulate.bids_dataset import write_bids_dataset

        statics = tuple(StudySpec("test", body, tumour=True) for body in _names(bmi))
        config = SimulationConfig(studies=statics, size=size, slices=slices, protocols=_names(protocols)[:1],
                                  seed=seed, noise_seed=noise_seed, device=device,
                                  progress=not no_progress)  # fmt: skip
        click.echo(f"Wrote the PET-BIDS dataset {write_bids_dataset(out, config, overwrite=overwrite)}.")
        return
    config = SimulationConfig(
        studies=cohort(n_studies, _names(bmi), lesions=lesions, test_studies=test_study,
                       ood=_names(ood), halves=halves, dense_lesions=dense_lesions),
        size=size, slices=slices, protocols=_names(protocols), levels_s=_seconds(levels),
        realisations=realisations, seed=seed, noise_seed=noise_seed, dicom=dicom, device=device,
        progress=not no_progress,
    )  # fmt: skip
    manifests = write_dataset(out, config, overwrite=overwrite)
    n = len(config.studies)
    click.echo(f"Wrote {n} {'study' if n == 1 else 'studies'} to {out}: " + ", ".join(str(m) for m in manifests.values()))


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
def models_command(as_json) -> None:
    """List the built-in models and how each was made (read from the model file's own metadata).

    The first is used by denoise, demo and evaluate when no --model is given.
    """
    import json

    from .builtin import builtin_model_paths, model_card

    cards = {path.stem: model_card(path) for path in builtin_model_paths()}
    if as_json:
        click.echo(json.dumps(cards, indent=2))
        return
    for name, card in cards.items():
        click.echo(name)
        click.echo("\n".join(f"  {field:<14}{text}" for field, text in card.items()))


@main.command("demo")
@click.option("-o", "--out", default="tgdpet-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's images and PNG.")
@click.option("--model", "model_path", type=MODEL, help=f"{MODEL_HELP}  [default: the built-in pretrained model]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the simulated study.")
@click.option("--overwrite", is_flag=True, help="Replace an existing demo folder.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
def demo_command(out, model_path, device, seed, overwrite, no_progress) -> None:
    """Simulate a study, denoise it with the built-in model, write NIfTI files and a PNG."""
    from .demo import run_demo

    r = run_demo(out, model=model_path, device=device, seed=seed, overwrite=overwrite, progress=not no_progress)
    click.echo(f"simulated a normal-BMI v1 study in {r.seconds_simulate:.1f} s, denoised it in {r.seconds_denoise:.1f} s")
    click.echo(
        f"liver CoV (spatial): 60 s input {r.liver_cov_input:.1f} %, denoised {r.liver_cov_denoised:.1f} %, "
        f"600 s reference {r.liver_cov_reference:.1f} %"
    )
    click.echo(f"wrote {r.out}/ (input_060s, denoised_060s, reference_600s .nii.gz and demo.png)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
