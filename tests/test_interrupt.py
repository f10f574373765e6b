"""Work killed at any moment (``kill -9``) leaves only complete files, and training resumes to the same weights.

The killed commands run as real subprocesses (``python -m tgdpet.cli``). A
kill lands at a file's write, or at a random moment; after each one, every
output present must be complete. Training runs are killed at a write from the
inside (:data:`DIE_WRITING`: the process kills itself once its atomic write of
the n-th file of a name has written the bytes, before the rename), so the
kill lands there however loaded the machine is; denoise and simulate, whose
writes take long, are killed by a poller that sees the hidden ``.tmp-*``
sibling fill. A temporary still there after the kill proves the kill landed
mid-write; a writer that bypassed the temporaries would never be killed
mid-write, and fails these tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_volume, tree_snapshot, write_test_nifti, write_test_series
from test_data import make_dataset

import tgdpet.io.nifti
from tgdpet.checkpoint import load_model, load_training_state, save_model
from tgdpet.cli import main
from tgdpet.data import load_manifest
from tgdpet.io import read_volume
from tgdpet.models import build_model
from tgdpet.tgd import masks_to_lists
from tgdpet.train import FinetuneConfig, TrainConfig, finetune, resolve_config, train
from tgdpet.train.outputs import FILES, STATE

# One optimiser step per epoch, so a run writes its checkpoint files after every step.
LOOP = dict(device="cpu", amp=False, patch_size=16, batch_size=4, patches_per_epoch=4, seed=3)
LOOP_ARGS = ["--device", "cpu", "--no-amp", "--patch-size", "16", "--batch-size", "4",
             "--patches-per-epoch", "4", "--seed", "3", "--no-progress"]  # fmt: skip


#: ``python -c DIE_WRITING NAME N ARGS...`` runs ``tgdpet ARGS`` and ``kill -9``s itself inside the atomic write
#: of the N-th file whose name starts with NAME ("" : any file), with its bytes written and not yet renamed.
DIE_WRITING = """
import contextlib, os, signal, sys
from pathlib import Path
name, nth = sys.argv[1], int(sys.argv[2])
sys.argv = ["tgdpet", *sys.argv[3:]]
import tgdpet.cli, tgdpet.files
original, writes = tgdpet.files.atomic_file, []

@contextlib.contextmanager
def dying(path, suffix=""):
    with original(path, suffix) as tmp:
        yield tmp
        if Path(path).name.startswith(name):
            writes.append(path)
            if len(writes) == nth:
                os.kill(os.getpid(), signal.SIGKILL)

for module in list(sys.modules.values()):
    if getattr(module, "atomic_file", None) is original:
        module.atomic_file = dying
tgdpet.cli.main()
"""


def launch(args: list[str], cwd: Path, logs: Path, die_writing: tuple[str, int] | None = None) -> subprocess.Popen:
    """Start ``tgdpet ARGS`` as its own process, with the thread count of this one (same arithmetic).

    ``die_writing=(name, n)``: it kills itself in the n-th write of a file named ``name*`` (:data:`DIE_WRITING`).
    Its output goes to a new file in ``logs``, shown if it fails.
    """
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    logs.mkdir(exist_ok=True)
    start = ["-m", "tgdpet.cli"] if die_writing is None else ["-c", DIE_WRITING, die_writing[0], str(die_writing[1])]
    with open(logs / f"{time.monotonic_ns()}.txt", "w") as log:
        return subprocess.Popen([sys.executable, *start, *args], cwd=cwd, env=env, stdout=log, stderr=log)


def temp_entries(folder: Path, name: str = "", *, written: bool = False) -> set[str]:
    """Hidden temporary siblings (of ``name``, or of anything) in ``folder``; with ``written``, only those
    that already hold data (a file with bytes, a folder with files): a write is under way."""
    found = set()
    try:
        for e in os.scandir(folder):
            if e.name.startswith(f".tmp-{name}"):
                with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                    if not written or (any(os.scandir(e.path)) if e.is_dir() else e.stat().st_size > 0):
                        found.add(e.name)
    except FileNotFoundError:
        pass
    return found


def kill_when(proc: subprocess.Popen, folder: Path, *, writing: str | None = None, written: bool = False,
              delay: float = 0.0, after: float | None = None, timeout: float = 60.0) -> list[str]:
    """``kill -9`` the process ``delay`` s after a new temporary file of ``writing`` appears in ``folder``
    (with ``written``: once it holds data), or ``after`` s after the start.

    Returns the new temporary files still present after the kill: non-empty
    when the kill interrupted a write ([] too when the process ended first).
    """
    start = time.monotonic()
    earlier = temp_entries(folder)  # leftovers of earlier kills
    while proc.poll() is None and time.monotonic() - start < timeout:
        if (writing is not None and temp_entries(folder, writing, written=written) - earlier) or (
            after is not None and time.monotonic() - start >= after
        ):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return sorted(temp_entries(folder) - earlier)
        time.sleep(0.0002)
    proc.kill()
    proc.wait()
    return []


def finish(proc: subprocess.Popen, logs: Path) -> None:
    assert proc.wait(timeout=120) == 0, "\n".join(p.read_text() for p in sorted(logs.iterdir()))


def assert_complete_run_folder(run: Path) -> None:
    """Whatever a killed run left under its real names is complete and loads; leftovers are hidden temporaries."""
    for name in os.listdir(run):
        assert name in FILES or name.startswith(".tmp-"), name
    for model in run.glob("*.safetensors"):
        load_model(model)
    if (run / STATE).exists():
        load_training_state(run / STATE)


def state_dicts_equal(a: Path, b: Path) -> bool:
    wa, wb = load_model(a).model.state_dict(), load_model(b).model.state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(run: Path) -> list[dict]:
    """Each epoch's metrics row without its timings (which differ between runs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "patches_per_s")} for r in rows]


def interrupt_and_resume(command: list[str], run: Path, kills: list[dict], logs: Path) -> list[list[str]]:
    """Run ``command`` (which writes to ``run``), killing it as each of ``kills`` says, then resume to the end.

    After each kill the run folder is checked. The next leg resumes when a
    training state exists and otherwise starts afresh (a run killed before its
    first epoch ended has nothing to resume). Returns the temporaries each kill
    interrupted.
    """
    def again() -> list[str]:
        return command + (["--resume"] if (run / STATE).exists() else (["--overwrite"] if run.exists() else []))

    interrupted = []
    for kill in kills:
        if "die_writing" in kill:
            earlier = temp_entries(run)
            dying = launch(again(), logs.parent, logs, kill["die_writing"])
            assert dying.wait(timeout=120) == -signal.SIGKILL, f"{kill}: the run ended before that write"
            interrupted.append(sorted(temp_entries(run) - earlier))
        else:
            interrupted.append(kill_when(launch(again(), logs.parent, logs), run, **kill))
        assert_complete_run_folder(run)
    finish(launch(again(), logs.parent, logs), logs)
    assert_complete_run_folder(run)
    return interrupted


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1, n_val=1, shape=(4, 16, 16))


@pytest.mark.slow
def test_train_killed_anywhere_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, dataset):
    epochs = 12
    reference = tmp_path / "reference"
    train(dataset, reference, resolve_config(TrainConfig, preset="tiny", epochs=epochs, **LOOP), progress_bar=False)

    run = tmp_path / "run"
    command = ["train", str(dataset), "-o", str(run), "--preset", "tiny", "--epochs", str(epochs), *LOOP_ARGS]
    rng = random.Random(7)
    kills = [
        {"die_writing": ("training_state.pt", 2)},  # in save_training_state, its bytes written, before the rename
        {"die_writing": ("last.safetensors", 1)},  # inside save_model's atomic write
        {"die_writing": ("", rng.randint(1, 12))},  # in whichever write comes then (config, models, metrics, state)
        {"after": rng.uniform(0.5, 4.0)},  # anywhere: start-up, a step, validation, a write
    ]
    interrupted = interrupt_and_resume(command, run, kills, tmp_path / "logs")

    assert [n.split("-")[1] for n in interrupted[0]] == ["training_state.pt"], interrupted
    assert [n.split("-")[1] for n in interrupted[1]] == ["last.safetensors"], interrupted
    assert len(interrupted[2]) == 1, interrupted
    for name in ("last.safetensors", "best.safetensors"):
        assert state_dicts_equal(reference / name, run / name), name
    assert len(metrics(run)) == epochs and metrics(run) == metrics(reference)
    assert load_training_state(run / STATE)["progress"]["step"] == epochs


@pytest.mark.slow
def test_tgd_finetune_killed_while_writing_resumes_to_the_same_weights(tmp_path, dataset):
    torch.manual_seed(5)
    base = tmp_path / "base.safetensors"
    save_model(base, build_model("tiny"), preset="tiny")
    epochs = 8
    reference = tmp_path / "reference"
    cfg = resolve_config(FinetuneConfig, epochs=epochs, phi=0.3, **LOOP)
    finetune(base, dataset, reference, cfg, progress_bar=False)

    run = tmp_path / "run"
    kills = [{"die_writing": ("training_state.pt", 1)}, {"die_writing": ("best", 1)}, {"die_writing": ("last", 2)}]
    command = ["tgd-finetune", str(base), str(dataset), "-o", str(run), "--phi", "0.3", "--epochs", str(epochs),
               *LOOP_ARGS]  # fmt: skip
    interrupted = interrupt_and_resume(command, run, kills, tmp_path / "logs")

    names = [[n.split("-")[1] for n in seen] for seen in interrupted]
    assert names == [["training_state.pt"], ["best.safetensors"], ["last.safetensors"]], interrupted
    assert state_dicts_equal(reference / "last.safetensors", run / "last.safetensors")
    masks = [masks_to_lists(load_model(r / "last.safetensors").masks) for r in (run, reference)]
    assert masks[0] == masks[1] and any(masks[0].values())


# --------------------------------------------------------------------------- atomic outputs of denoise


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, build_model("tiny"), preset="tiny")
    return path


def denoise_args(model: Path, src: str, out: str, *more: str) -> list[str]:
    return ["denoise", "--model", str(model), "--device", "cpu", "--precision", "fp32", "--no-progress", src, "-o", out,
            *more]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_denoise_killed_while_writing_leaves_nothing_under_the_output_name(tmp_path, model_file, kind):
    # Big enough (4 M voxels) that writing takes a while; the kill lands while the temporary output exists.
    work = tmp_path / "work"
    work.mkdir()
    volume = make_volume(shape=(64, 256, 256) if kind == "nifti" else (48, 128, 128))
    if kind == "nifti":
        src, out = "study.nii.gz", "study_dn.nii.gz"
        write_test_nifti(work / src, volume)
    else:
        src, out = "study", "study_dn"
        write_test_series(work / src, volume)
    inputs = tree_snapshot(work)

    denoising = launch(denoise_args(model_file, src, out), work, tmp_path / "logs")
    seen = kill_when(denoising, work, writing=out, written=True)
    assert seen, "the process ended before its output was written"
    assert not (work / out).exists()  # nothing under the output name, only a hidden temporary sibling
    assert {k: v for k, v in tree_snapshot(work).items() if not k.startswith(".tmp-")} == inputs

    # The next run is not confused by the leftover: no --overwrite needed, and its output is complete.
    result = CliRunner().invoke(main, denoise_args(model_file, str(work / src), str(work / out)))
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in tree_snapshot(work).items() if k in inputs} == inputs
    written = read_volume(work / out).data
    assert written.shape == volume.shape and np.isfinite(written).all()


@pytest.mark.slow
def test_simulate_killed_while_writing_leaves_nothing_under_the_output_name(tmp_path, monkeypatch):
    args = ["simulate", "sim", "--studies", "2", "--size", "32", "--slices", "8", "--levels", "30,60", "--protocols",
            "v1", "--no-test-study", "--ood", "none", "--device", "cpu", "--no-progress"]  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    seen = kill_when(launch(args, work, tmp_path / "logs"), work, writing="sim", written=True)
    assert seen and not (work / "sim").exists()
    assert all(name.startswith(".tmp-sim-") for name in os.listdir(work))

    # The leftover is no obstacle: the next run needs no --overwrite, and writes a complete dataset.
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(work / "sim" / "v1")
    assert [s.id for s in manifest.studies] == ["s000", "s001"]
    assert all(read_volume(p).shape == (8, 32, 32) for s in manifest.studies for p in (s.target, *s.inputs))


def test_outputs_are_not_replaced_without_overwrite_and_inputs_never_change(tmp_path, model_file):
    src = write_test_nifti(tmp_path / "study.nii.gz")
    write_test_series(tmp_path / "series")
    inputs = tree_snapshot(tmp_path)
    runner = CliRunner()
    for name in ("study.nii.gz", "series"):
        out = tmp_path / f"{name}_out" if name == "series" else tmp_path / "study_out.nii.gz"
        assert runner.invoke(main, denoise_args(model_file, str(tmp_path / name), str(out))).exit_code == 0
        first = tree_snapshot(tmp_path)
        again = runner.invoke(main, denoise_args(model_file, str(tmp_path / name), str(out)))
        assert again.exit_code == 2 and "--overwrite" in again.stderr
        assert tree_snapshot(tmp_path) == first
        replaced = runner.invoke(main, denoise_args(model_file, str(tmp_path / name), str(out), "--overwrite"))
        assert replaced.exit_code == 0
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers after success
    # even with --overwrite, an output over the input is refused
    over = runner.invoke(main, denoise_args(model_file, str(src), str(src), "--overwrite"))
    assert over.exit_code == 2 and "would replace the input" in over.stderr
    assert {k: v for k, v in tree_snapshot(tmp_path).items() if k in inputs} == inputs


def test_ctrl_c_during_the_write_says_so_in_one_line_and_leaves_nothing(tmp_path, model_file, monkeypatch):
    src = write_test_nifti(tmp_path / "study.nii.gz")

    def interrupted_write(data, fileobj, *args, **kwargs):
        fileobj.write(b"half a volume")
        raise KeyboardInterrupt

    monkeypatch.setattr(tgdpet.io.nifti, "array_to_file", interrupted_write)
    result = CliRunner().invoke(main, denoise_args(model_file, str(src), str(tmp_path / "out.nii.gz")))
    assert result.exit_code == 130
    assert result.stderr.startswith("Interrupted; ") and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.nii.gz"]  # not even a temporary is left


def test_outputs_get_the_permissions_of_an_ordinary_file(tmp_path):
    """Temporary files are private (0600); the renamed output must not stay so (others must read results).

    Model files too: safetensors writes a new file in place of the temporary one, private again.
    """
    old = os.umask(0o022)
    try:
        write_test_nifti(tmp_path / "a.nii.gz")
        write_test_series(tmp_path / "s")
        save_model(tmp_path / "m.safetensors", build_model("tiny"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.nii.gz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in (tmp_path / "s").iterdir())
