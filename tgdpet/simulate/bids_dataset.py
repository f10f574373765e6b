"""A small PET-BIDS dataset from the simulator: static and dynamic FDG studies, with their truth beside them.

``tgdpet simulate OUT --bids`` writes

- ``OUT/dataset_description.json``, ``README``, ``participants.tsv``/``.json``;
- one static subject per BMI class (``sub-01``, ...): a 60 s scan 60 min after injection, with the 20 mm
  liver tumour;
- one dynamic subject (the last): 0-62 min in 22 frames of 10 s to 10 min
  (:data:`tgdpet.simulate.dynamic.FRAME_DURATIONS_S`), a 4-D image;
- each image as ``sub-XX/pet/sub-XX_trc-FDG_rec-<protocol>_pet.nii.gz`` with the
  PET-BIDS sidecar (Units, tracer, injection, frame timing, reconstruction);
- ``OUT/derivatives/phantom/``: per subject the noise-free reconstruction
  (``desc-noisefree``), the true activity (``desc-truth``) and the label map
  (``desc-labels_dseg``, codes in ``desc-labels_dseg.tsv``): what the denoised
  images are measured against.

The images are decay-corrected to the injection (TimeZero) and hold
Bq/mL; the counts behind a frame follow its duration and activity (see
:mod:`tgdpet.simulate.dynamic`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import __version__
from ..files import atomic_dir, check_can_write
from ..io import Volume, write_frames, write_volume
from ..runtime import resolve_device
from .dataset import INJECTION_TIME, SimulationConfig, StudySpec
from .dynamic import FRAME_DURATIONS_S, STATIC_TIME_S, DynamicStudy, simulate_dynamic
from .phantom import INJECTED_DOSE_BQ, LABEL_CODES, build_phantom
from .projector import projector_for
from .recon import PROTOCOLS

#: Seconds of the static subjects' scan (from :data:`~tgdpet.simulate.dynamic.STATIC_TIME_S` after injection).
STATIC_SCAN_S = 60.0
DESCRIPTION = "tgdpet simulated"


def pet_sidecar(study: DynamicStudy, protocol: str, scan_start_s: float) -> dict:
    """The PET-BIDS sidecar of one simulated image: the required fields, with what the simulation did."""
    p = PROTOCOLS[protocol]
    return {
        "Manufacturer": "tgdpet simulator",
        "ManufacturersModelName": "2D-per-slice scanner model (tgdpet.simulate.scanner)",
        "Units": "Bq/mL",
        "TracerName": "FDG",
        "TracerRadionuclide": "F18",
        "InjectedRadioactivity": INJECTED_DOSE_BQ / 1e6,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": "n/a",
        "InjectedMassUnits": "n/a",
        "SpecificRadioactivity": "n/a",
        "SpecificRadioactivityUnits": "n/a",
        "ModeOfAdministration": "bolus",
        "TimeZero": INJECTION_TIME.strftime("%H:%M:%S"),
        "ScanStart": scan_start_s,
        "InjectionStart": 0,
        "FrameTimesStart": list(study.starts_s),
        "FrameDuration": list(study.durations_s),
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": f"OSEM (tgdpet protocol {protocol})",
        "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"],
        "ReconMethodParameterValues": [p.subsets, p.iterations],
        "ReconFilterType": "Gaussian" if p.post_filter_fwhm_mm else "none",
        "ReconFilterSize": p.post_filter_fwhm_mm,
        "AttenuationCorrection": "computed from the phantom's attenuation map",
    }


def _frames(images: list[torch.Tensor], config: SimulationConfig) -> list[Volume]:
    affine = config.grid.affine()
    return [Volume(data=im.detach().cpu().numpy(), affine=affine, units="BQML") for im in images]


def _write_image(images: list[torch.Tensor], config: SimulationConfig, path: Path) -> None:
    frames = _frames(images, config)
    if len(frames) == 1:
        write_volume(frames[0], path, description=DESCRIPTION)
    else:
        write_frames(frames, path, description=DESCRIPTION)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def write_bids_dataset(out: str | Path, config: SimulationConfig, overwrite: bool = False) -> Path:
    """Simulate one static subject per study of ``config`` (its body size) and one dynamic subject into a
    PET-BIDS dataset at ``out``, reconstructed with ``config.protocols[0]``; returns ``out``."""
    out = check_can_write(Path(out), overwrite, folder=True)
    device = resolve_device(config.device)
    protocol = config.protocols[0]
    grid = config.grid
    projector = projector_for(grid.size, grid.pixel_mm, str(device))
    subjects = [(spec, "static") for spec in config.studies] + [(StudySpec("test", "normal", tumour=True), "dynamic")]
    participants = ["participant_id\tbmi_class\tweight_kg\tframes"]
    with atomic_dir(out, overwrite=overwrite) as root:
        derived = root / "derivatives" / "phantom"
        for index, (spec, kind) in enumerate(subjects):
            sub = f"sub-{index + 1:02d}"
            seed, noise_seed = config.seeds(index)
            spec = dataclasses.replace(spec, tumour=True, lesions=False)
            phantom = build_phantom(spec.phantom_spec(seed, config.texture), grid, device)
            generator = torch.Generator(device=device).manual_seed(noise_seed)
            if kind == "static":
                study = simulate_dynamic(phantom, projector, protocol, generator, (STATIC_SCAN_S,), (STATIC_TIME_S,))
            else:
                study = simulate_dynamic(phantom, projector, protocol, generator, FRAME_DURATIONS_S)
            name = f"{sub}_trc-FDG_rec-{protocol}"
            (root / sub / "pet").mkdir(parents=True)
            (derived / sub / "pet").mkdir(parents=True)
            _write_image(study.images, config, root / sub / "pet" / f"{name}_pet.nii.gz")
            _write_json(root / sub / "pet" / f"{name}_pet.json", pet_sidecar(study, protocol, study.starts_s[0]))
            _write_image(study.noise_free, config, derived / sub / "pet" / f"{name}_desc-noisefree_pet.nii.gz")
            _write_image(study.truth, config, derived / sub / "pet" / f"{name}_desc-truth_pet.nii.gz")
            write_volume(Volume(phantom.labels.float().cpu().numpy(), grid.affine(), units="LABELS"),
                         derived / sub / "pet" / f"{sub}_desc-labels_dseg.nii.gz", description="tgdpet phantom labels")
            participants.append(f"{sub}\t{spec.body}\t{phantom.weight_kg:.1f}\t{len(study.durations_s)}")
        _write_json(root / "dataset_description.json", {
            "Name": "tgdpet simulated FDG PET", "BIDSVersion": "1.9.0", "DatasetType": "raw", "License": "CC0",
            "Authors": ["tgdpet simulator"], "GeneratedBy": [{"Name": "tgdpet", "Version": __version__}],
        })  # fmt: skip
        (root / "README").write_text(
            "Simulated whole-body FDG PET (tgdpet simulate --bids): static subjects, one per BMI class, and a "
            "dynamic one (the last). derivatives/phantom holds each image's noise-free reconstruction, true "
            "activity and label map.\n", encoding="utf-8")  # fmt: skip
        (root / "participants.tsv").write_text("\n".join(participants) + "\n", encoding="utf-8")
        _write_json(root / "participants.json", {
            "bmi_class": {"Description": "body size of the phantom", "Levels": {"low": "BMI ~16.5",
                          "normal": "BMI ~23.7", "high": "BMI ~42"}},
            "weight_kg": {"Description": "phantom weight", "Units": "kg"},
            "frames": {"Description": "time frames of the subject's PET image"},
        })  # fmt: skip
        _write_json(derived / "dataset_description.json", {
            "Name": "tgdpet phantom truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "tgdpet simulate", "Version": __version__}],
        })  # fmt: skip
        (derived / "desc-labels_dseg.tsv").write_text(
            "index\tname\n" + "".join(f"{code}\t{name}\n" for name, code in LABEL_CODES.items()), encoding="utf-8"
        )
    return out
