"""Simulated datasets: studies of several kinds, reconstructed per protocol, with manifests.

A study is one phantom scanned once for ``target_s`` (600 s). Everything
else is cut from that scan's prompts, like list-mode subsampling, and every
image of the study (all count levels, both protocols) comes from the same
counts, so v1 and v2 differ only in reconstruction. Study kinds:

- ``train`` / ``val``: the 600 s target and one noisy input per count level
  (each an independent binomial thinning of the scan);
- ``test``: R disjoint 60 s realisations that together make the 600 s scan
  (sequential binomials), target = the 600 s image; they are its inputs too;
- ``ood``: an out-of-distribution study (catheter, very hot bladder): a
  120 s scan split into two disjoint 60 s halves for Noise2Noise online
  learning; its input is the full 120 s image (split ``test``).

Layout written by :func:`write_dataset` (atomically, as one folder)::

    OUT/simulation.json                 configuration, per-study facts, physics
    OUT/labels/s000.nii.gz              label map (codes in the manifests' "label_codes")
    OUT/truth/s000.nii.gz               the phantom's activity (Bq/mL)
    OUT/v1/manifest.json                one manifest per protocol (paths relative to it)
    OUT/v1/s000/target_600s.nii.gz      images in Bq/mL (a DICOM series folder with dicom=True)
    OUT/v1/s000/noisy_030s.nii.gz ...

Study ``i`` draws all its randomness from seed ``(seed, i)``: a study does
not change when others are added after it. Two datasets meant to hold
different phantoms need different seeds. ``noise_seed`` scans the same
patients again: the phantoms still come from ``seed``, the counts' Poisson
noise from ``(noise_seed, i)``, so a figure measured on a study can be
repeated on an independent scan of the same patient (a test-retest pair).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from .. import __version__
from ..errors import TgdpetError
from ..files import atomic_dir, atomic_file, check_can_write, check_replaceable
from ..io import Volume, write_volume
from ..io.acquisition import F18_HALF_LIFE_S
from ..runtime import resolve_device
from .grid import Grid
from .phantom import BODY_SCALES, INJECTED_DOSE_BQ, LABEL_CODES, UPTAKE_S, Phantom, PhantomSpec, build_phantom
from .projector import projector_for
from .recon import PROTOCOLS, reconstruct
from .scanner import ScannerModel, acquire, count_rates, split, thin

STUDY_KINDS = ("train", "val", "test", "ood")
OOD_FEATURES = ("catheter", "bladder")
#: Clock time of every simulated injection; the scan starts :data:`UPTAKE_S` later.
INJECTION_TIME = dt.datetime(2021, 9, 27, 9, 0, 0)


@dataclass(frozen=True)
class StudySpec:
    """One study to simulate: its kind, body size and features.

    ``protocols`` limits the study to some protocols (default: all of the dataset's), e.g.
    extra low-BMI studies only reconstructed with v2 for fine-tuning.
    """

    kind: str = "train"
    body: str = "normal"
    lesions: bool = True
    dense_lesions: bool = False
    tumour: bool = False
    ood: tuple[str, ...] = ()
    halves: bool = False
    protocols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in STUDY_KINDS:
            raise TgdpetError(f"unknown study kind {self.kind!r}; use one of {', '.join(STUDY_KINDS)}.")
        if self.body not in BODY_SCALES:
            raise TgdpetError(f"unknown body size {self.body!r}; use one of {', '.join(BODY_SCALES)}.")
        bad = [f for f in self.ood if f not in OOD_FEATURES]
        if bad:
            raise TgdpetError(f"unknown out-of-distribution feature {bad[0]!r}; use {' or '.join(OOD_FEATURES)}.")
        if self.dense_lesions and not self.lesions:
            raise TgdpetError(
                "dense lesions were asked for in studies without lesions; drop --dense-lesions or --no-lesions."
            )
        if self.kind == "ood" and not self.ood:
            raise TgdpetError("an 'ood' study needs at least one feature (catheter, bladder).")

    @property
    def split(self) -> str:
        """The manifest split: OOD studies are for testing only."""
        return "test" if self.kind == "ood" else self.kind

    def phantom_spec(self, seed: int, texture: bool) -> PhantomSpec:
        return PhantomSpec(
            body_scale=BODY_SCALES[self.body],
            seed=seed,
            texture=texture,
            lesions=self.lesions and self.kind in ("train", "val"),
            dense_lesions=self.dense_lesions,
            tumour=self.tumour,
            catheter="catheter" in self.ood,
            hot_bladder="bladder" in self.ood,
        )


@dataclass(frozen=True)
class SimulationConfig:
    """A whole dataset: its studies, grid, protocols, count levels and run options."""

    studies: tuple[StudySpec, ...]
    size: int = 128
    slices: int = 144
    protocols: tuple[str, ...] = ("v1", "v2")
    levels_s: tuple[float, ...] = (30, 45, 60, 90, 120, 180)
    target_s: float = 600.0
    realisations: int = 10
    realisation_s: float = 60.0
    halves_scan_s: float = 120.0
    texture: bool = True
    seed: int = 0
    noise_seed: int | None = None  # the counts' noise; None: from ``seed``, as the phantoms
    dicom: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "studies", tuple(self.studies))
        object.__setattr__(self, "protocols", tuple(self.protocols))
        object.__setattr__(self, "levels_s", tuple(float(s) for s in self.levels_s))
        if not self.studies:
            raise TgdpetError("the dataset has no studies; ask for at least one.")
        if not 16 <= self.size <= 512:
            raise TgdpetError(f"size {self.size} is out of range; use 16 to 512 pixels (128 gives 4 mm voxels).")
        if not 4 <= self.slices <= 1024:
            raise TgdpetError(f"{self.slices} slices is out of range; use 4 to 1024 (144 gives 4 mm slices).")
        if not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise TgdpetError(f"give each reconstruction protocol once ({', '.join(PROTOCOLS)}).")
        for p in self.protocols + tuple(q for s in self.studies for q in (s.protocols or ())):
            if p not in PROTOCOLS:
                raise TgdpetError(f"unknown protocol {p!r}; use {', '.join(PROTOCOLS)}.")
        for p in self.protocols:
            if not any(p in self.study_protocols(s) for s in self.studies):
                raise TgdpetError(f"no study is reconstructed with protocol {p}; remove it from the protocols.")
        if not self.levels_s or len(set(self.levels_s)) != len(self.levels_s):
            raise TgdpetError("give at least one count level, each once.")
        if any(not 0 < s <= self.target_s for s in self.levels_s):
            raise TgdpetError(
                f"count levels must be above 0 s and at most the {self.target_s:g} s target scan; pass e.g. --levels 60."
            )
        if self.realisations < 2:
            raise TgdpetError(
                f"{self.realisations} realisation(s) cannot show noise: evaluation measures it as the spread across "
                f"a test study's realisations, which needs at least 2; use 2 to "
                f"{int(self.target_s // self.realisation_s)}."
            )
        if self.realisations * self.realisation_s > self.target_s:
            raise TgdpetError(
                f"{self.realisations} realisations of {self.realisation_s:g} s do not fit the "
                f"{self.target_s:g} s scan; use 2 to {int(self.target_s // self.realisation_s)}."
            )
        for name, value in (("seed", self.seed), ("noise seed", self.noise_seed)):
            if value is not None and value < 0:
                raise TgdpetError(f"the {name} is {value}; use 0 or a positive integer.")
        if not 0 < self.halves_scan_s <= self.target_s:
            raise TgdpetError(f"the scan split into halves must last 0 to {self.target_s:g} s.")

    def study_protocols(self, study: StudySpec) -> tuple[str, ...]:
        return study.protocols if study.protocols is not None else self.protocols

    @property
    def grid(self) -> Grid:
        return Grid(self.size, self.slices)

    def seeds(self, index: int) -> tuple[int, int]:
        """Study ``index``'s phantom seed and the seed of its counts' noise."""
        seed = study_seed(self.seed, index)
        return seed, seed if self.noise_seed is None else study_seed(self.noise_seed, index)


def cohort(
    n_studies: int,
    bodies: Sequence[str] = ("low", "normal", "high"),
    lesions: bool = True,
    test_studies: bool = True,
    ood: Sequence[str] = OOD_FEATURES,
    halves: bool = False,
    dense_lesions: bool = False,
) -> tuple[StudySpec, ...]:
    """The studies of a typical dataset (what ``tgdpet simulate`` writes).

    ``n_studies`` training studies (0: test studies only) cycle through ``bodies``; every fifth is a validation
    study. With ``test_studies``, one test study with the inserted liver tumour per body
    size; with ``ood`` features, one normal-size OOD study. ``halves`` adds Noise2Noise
    halves to the training studies too; ``dense_lesions`` gives them more random lesions
    (:data:`~tgdpet.simulate.phantom.DENSE_LESION_COUNT`).
    """
    if n_studies < 0 or (n_studies == 0 and not test_studies and not ood):
        raise TgdpetError(
            f"the number of training studies must be at least 1 (or 0 with test studies), got {n_studies}."
        )
    if not bodies:
        raise TgdpetError("give at least one BMI class (low, normal, high).")
    kinds = ["val" if (i + 1) % 5 == 0 else "train" for i in range(n_studies)]
    studies = [
        StudySpec(k, bodies[i % len(bodies)], lesions=lesions, dense_lesions=dense_lesions, halves=halves)
        for i, k in enumerate(kinds)
    ]
    if test_studies:
        studies += [StudySpec("test", b, tumour=True) for b in dict.fromkeys(bodies)]
    if ood:
        studies.append(StudySpec("ood", "normal", ood=tuple(ood), halves=True))
    return tuple(studies)


@dataclass
class Scan:
    """One image of a study: a file name, its scan length, its role in the manifest, its prompts."""

    name: str
    seconds: float
    role: str  # "target", "input", "realisation" or "half"
    counts: torch.Tensor = field(repr=False)


@dataclass
class SimulatedStudy:
    """A simulated study: its phantom, its scans, and per protocol one image (Bq/mL) per scan."""

    id: str
    spec: StudySpec
    seed: int
    noise_seed: int
    phantom: Phantom
    scans: list[Scan]
    images: dict[str, list[torch.Tensor]]


def study_seed(seed: int, index: int) -> int:
    """The seed of study ``index`` of a dataset seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _tag(seconds: float) -> str:
    return f"{int(seconds):03d}s" if float(seconds).is_integer() else f"{seconds:g}s".replace(".", "p")


def _scans(spec: StudySpec, config: SimulationConfig, rate: torch.Tensor, generator: torch.Generator) -> list[Scan]:
    """The study's scan and everything cut from it (see the module docstring)."""
    full = acquire(rate, config.target_s, generator)
    scans = [Scan(f"target_{_tag(config.target_s)}", config.target_s, "target", full)]
    if spec.kind in ("train", "val"):
        for s in config.levels_s:
            scans.append(Scan(f"noisy_{_tag(s)}", s, "input", thin(full, s / config.target_s, generator)))
    elif spec.kind == "test":
        parts = split(full, [config.realisation_s / config.target_s] * config.realisations, generator)
        tag = _tag(config.realisation_s)
        scans += [Scan(f"real{i:02d}_{tag}", config.realisation_s, "realisation", p) for i, p in enumerate(parts)]
    if spec.halves or spec.kind == "ood":
        scan = thin(full, config.halves_scan_s / config.target_s, generator)
        if spec.kind == "ood":
            scans.append(Scan(f"noisy_{_tag(config.halves_scan_s)}", config.halves_scan_s, "input", scan))
        half = config.halves_scan_s / 2
        for i, p in enumerate(split(scan, [0.5, 0.5], generator)):
            scans.append(Scan(f"half{i + 1}_{_tag(half)}", half, "half", p))
    return scans


def simulate_study(spec: StudySpec, config: SimulationConfig, index: int = 0) -> SimulatedStudy:
    """Simulate and reconstruct study ``index`` of ``config`` in memory (on ``config.device``)."""
    device = resolve_device(config.device)
    grid = config.grid
    seed, noise_seed = config.seeds(index)
    phantom = build_phantom(spec.phantom_spec(seed, config.texture), grid, device)
    projector = projector_for(grid.size, grid.pixel_mm, str(device))
    rates = count_rates(phantom, projector, ScannerModel())
    generator = torch.Generator(device=device).manual_seed(noise_seed)
    scans = _scans(spec, config, rates.prompts, generator)
    images = {
        p: reconstruct([s.counts for s in scans], [s.seconds for s in scans], rates, PROTOCOLS[p], projector, grid)
        for p in config.study_protocols(spec)
    }
    return SimulatedStudy(f"s{index:03d}", spec, seed, noise_seed, phantom, scans, images)


def _volume(data: torch.Tensor, grid: Grid, units: str, study: SimulatedStudy, seconds: float | None) -> Volume:
    meta = {}
    if seconds is not None:
        meta = {
            "patient_weight_kg": study.phantom.weight_kg,
            "injected_dose_bq": INJECTED_DOSE_BQ,
            "half_life_s": F18_HALF_LIFE_S,
            "injection_datetime": INJECTION_TIME,
            "series_datetime": INJECTION_TIME + dt.timedelta(seconds=UPTAKE_S),
            "decay_correction": "START",
            "corrected_image": ("ATTN", "DECY", "SCAT", "RAN"),
            "frame_duration_s": seconds,
        }
    return Volume(data=data.detach().cpu().numpy(), affine=grid.affine(), units=units, meta=meta)


def _write_study(study: SimulatedStudy, config: SimulationConfig, root: Path) -> dict[str, dict]:
    """Write one study's files under ``root``; return its manifest entry per protocol."""
    grid, sid = config.grid, study.id
    write_volume(
        _volume(study.phantom.labels.float(), grid, "LABELS", study, None),
        root / "labels" / f"{sid}.nii.gz",
        description="tgdpet phantom labels",
    )
    write_volume(
        _volume(study.phantom.activity, grid, "BQML", study, None),
        root / "truth" / f"{sid}.nii.gz",
        description="tgdpet phantom activity",
    )
    scan = [str(study.seed)] if study.noise_seed == study.seed else [str(study.seed), str(study.noise_seed)]
    uid = {k: generate_uid(entropy_srcs=[*scan, sid, k]) for k in ("study", "frame")}  # a rescan is a new study
    entries = {}
    for p, images in study.images.items():
        folder = root / p / sid
        folder.mkdir(parents=True)
        paths: dict[str, list[str]] = {"target": [], "input": [], "half": [], "realisation": []}
        seconds: dict[str, list[float]] = {role: [] for role in paths}
        for number, (scan, image) in enumerate(zip(study.scans, images), start=1):
            name = scan.name if config.dicom else f"{scan.name}.nii.gz"
            description = f"tgdpet sim {p} {_tag(scan.seconds)}"
            dicom_meta = None
            if config.dicom:
                dicom_meta = {
                    "PatientID": f"TGDPET-SIM-{sid}",
                    "PatientName": f"SIMULATED^{sid.upper()}",
                    "StudyInstanceUID": uid["study"],
                    "FrameOfReferenceUID": uid["frame"],
                    "SeriesNumber": (list(PROTOCOLS).index(p) + 1) * 100 + number,
                    "BodyPartExamined": "WHOLEBODY",  # neck to pelvis, as PET whole-body scans are
                }
            write_volume(
                _volume(image, grid, "BQML", study, scan.seconds),
                folder / name,
                description=description,
                dicom_meta=dicom_meta,
            )
            paths[scan.role].append(f"{sid}/{name}")
            seconds[scan.role].append(scan.seconds)
        entry = {
            "id": sid,
            "split": study.spec.split,
            "target": paths["target"][0],
            "inputs": paths["input"] + paths["realisation"],  # a test study's realisations are its inputs
            "labels": f"../labels/{sid}.nii.gz",
        }
        if paths["half"]:
            entry["halves"] = paths["half"]
        if paths["realisation"]:
            entry["realisations"] = paths["realisation"]
        entry["meta"] = {**_study_facts(study), "protocol": p, "units": "BQML", "count_levels_s": seconds["input"] + seconds["realisation"],
                         "target_s": config.target_s, "truth": f"../truth/{sid}.nii.gz"}
        entries[p] = entry
    return entries


def _study_facts(study: SimulatedStudy) -> dict:
    spec = study.spec
    features = [f for f, on in (("tumour", spec.tumour), ("catheter", "catheter" in spec.ood),
                                ("hot_bladder", "bladder" in spec.ood)) if on]
    return {
        "kind": spec.kind,
        "body": spec.body,
        "body_scale": BODY_SCALES[spec.body],
        "bmi": round(study.phantom.bmi, 1),
        "weight_kg": round(study.phantom.weight_kg, 1),
        "seed": study.seed,
        "noise_seed": study.noise_seed,
        "features": features,
    }


def _write_json(path: Path, content: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")


def write_dataset(out: str | Path, config: SimulationConfig, overwrite: bool = False) -> dict[str, Path]:
    """Simulate every study of ``config`` into the folder ``out``; return each protocol's manifest.

    The folder appears complete or not at all; an existing one is replaced only with
    ``overwrite``, and only when it is a dataset simulated before (nothing else in it).
    """
    out = check_can_write(Path(out), overwrite, folder=True)
    if overwrite:  # a dataset folder is replaced whole: never one holding anything else
        ours = {"labels", "truth", "simulation.json", *PROTOCOLS}
        simulated = (out / "simulation.json").is_file()
        check_replaceable(out, lambda p: simulated and p.name in ours, "the files of a dataset tgdpet simulated")
    device = resolve_device(config.device)
    manifests = {p: {"format": "tgdpet-manifest", "version": 1, "label_codes": LABEL_CODES, "studies": []}
                 for p in config.protocols}
    facts = []
    started = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as root:
        (root / "labels").mkdir()
        (root / "truth").mkdir()
        bar = tqdm(config.studies, desc="simulating", unit="study", disable=not config.progress)
        for index, spec in enumerate(bar):
            study = simulate_study(spec, dataclasses.replace(config, device=str(device)), index)
            for p, entry in _write_study(study, config, root).items():
                manifests[p]["studies"].append(entry)
            facts.append({"id": study.id, **_study_facts(study), "protocols": list(study.images)})
        for p, manifest in manifests.items():
            _write_json(root / p / "manifest.json", manifest)
        _write_json(
            root / "simulation.json",
            {
                "tgdpet_version": __version__,
                "config": dataclasses.asdict(config),
                "scanner": dataclasses.asdict(ScannerModel()),
                "protocols": {p: dataclasses.asdict(PROTOCOLS[p]) for p in config.protocols},
                "label_codes": LABEL_CODES,
                "studies": facts,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
    return {p: out / p / "manifest.json" for p in config.protocols}
