"""What a model was trained on, and a one-sentence warning when an image is outside it.

A denoiser is only measured on images like its training data. Every model
file records that range (``provenance["domain"]``): voxel sizes, intensity
units, reconstruction protocols, count levels and tracer. ``tgdpet models``
shows it and ``tgdpet denoise`` compares each input with it.

What can be checked from an image is checked: voxel size and units. Finer
voxels than the model's are not a warning, because the denoiser handles them
on coarser grids up to the model's (:mod:`tgdpet.resample`); coarser ones
are. Bq/mL and SUV are the same quantity up to a factor, which the intensity
normalisation removes, so either is inside a model trained on one of them;
counts or arbitrary units are not. Reconstruction settings and count levels are
recorded and shown but not checked: an image does not reliably say how it was
reconstructed, and the counts behind it depend on the scanner and dose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .errors import TgdpetError

#: Units that measure activity concentration (DICOM Units terms; ``SUV`` is tgdpet's name for ``GML``).
CONCENTRATION_UNITS = frozenset({"BQML", "SUV"})

#: How much coarser than the coarsest training voxel an image may be before it is called outside.
COARSER_TOLERANCE = 1.15


def _mm(values: Iterable[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


@dataclass(frozen=True)
class Domain:
    """The range of images a model was trained on.

    Attributes:
        voxel_min_mm, voxel_max_mm: the finest and the coarsest voxel size of
            the training images along ``(z, y, x)`` of the canonical frame
            (slice thickness, then in-plane).
        units: the intensity units of the training images.
        protocols: reconstruction protocols, as the training data names them.
        count_levels_s: the shortest and the longest input scan, in seconds.
        tracer: the tracer, when known.
    """

    voxel_min_mm: tuple[float, float, float]
    voxel_max_mm: tuple[float, float, float]
    units: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    count_levels_s: tuple[float, float] | None = None
    tracer: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record written into a model file's provenance."""
        out: dict[str, Any] = {
            "voxel_min_mm": list(self.voxel_min_mm),
            "voxel_max_mm": list(self.voxel_max_mm),
            "units": list(self.units),
            "protocols": list(self.protocols),
        }
        if self.count_levels_s is not None:
            out["count_levels_s"] = list(self.count_levels_s)
        if self.tracer:
            out["tracer"] = self.tracer
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Domain":
        levels = raw.get("count_levels_s")
        for key in ("voxel_min_mm", "voxel_max_mm"):
            if len(raw[key]) != 3 or not all(float(v) > 0 for v in raw[key]):
                raise ValueError(f"{key} must be three positive sizes")
        return cls(
            voxel_min_mm=tuple(float(v) for v in raw["voxel_min_mm"]),  # type: ignore[arg-type]
            voxel_max_mm=tuple(float(v) for v in raw["voxel_max_mm"]),  # type: ignore[arg-type]
            units=tuple(raw.get("units") or ()),
            protocols=tuple(raw.get("protocols") or ()),
            count_levels_s=(float(levels[0]), float(levels[1])) if levels else None,
            tracer=raw.get("tracer"),
        )

    def union(self, other: "Domain") -> "Domain":
        """The range of a model trained on both (a fine-tuned model keeps what its base knew)."""
        levels = [r for r in (self.count_levels_s, other.count_levels_s) if r is not None]
        return Domain(
            voxel_min_mm=tuple(min(a, b) for a, b in zip(self.voxel_min_mm, other.voxel_min_mm)),  # type: ignore[arg-type]
            voxel_max_mm=tuple(max(a, b) for a, b in zip(self.voxel_max_mm, other.voxel_max_mm)),  # type: ignore[arg-type]
            units=tuple(dict.fromkeys(self.units + other.units)),
            protocols=tuple(dict.fromkeys(self.protocols + other.protocols)),
            count_levels_s=(min(r[0] for r in levels), max(r[1] for r in levels)) if levels else None,
            tracer=self.tracer if self.tracer == other.tracer else (self.tracer or other.tracer),
        )

    def describe(self) -> str:
        """One line for ``tgdpet models``."""
        if self.voxel_min_mm == self.voxel_max_mm:
            voxels = _mm(self.voxel_min_mm)
        else:
            voxels = f"{_mm(self.voxel_min_mm)} to {_mm(self.voxel_max_mm)}"
        finer = (
            "finer ones are denoised on the best of the grids between theirs and the finest of these, "
            "these on their own grid or one 1.25x finer"
        )
        parts = [f"voxels {voxels} (z x y x x; {finer})"]
        if self.units:
            parts.append("units " + ", ".join(self.units))
        if self.protocols:
            parts.append("reconstructions " + ", ".join(self.protocols))
        if self.count_levels_s:
            parts.append(f"scans of {self.count_levels_s[0]:g}-{self.count_levels_s[1]:g} s")
        return "; ".join(parts)

    def warnings(self, voxel_mm: Sequence[float], units: str | None) -> list[str]:
        """One sentence per way an image with these voxels ``(z, y, x)`` and units is outside the range."""
        out = []
        if any(v > COARSER_TOLERANCE * m for v, m in zip(voxel_mm, self.voxel_max_mm)):
            out.append(
                f"its voxels ({_mm(voxel_mm)}, z x y x x) are coarser than any the model was trained on "
                f"(at most {_mm(self.voxel_max_mm)}), so its noise reduction there is unmeasured: check the "
                "result, or fine-tune the model on a few studies like it (tgdpet tgd-finetune)."
            )
        trained_on_concentration = not self.units or set(self.units) <= CONCENTRATION_UNITS
        if units and trained_on_concentration and units.upper() not in CONCENTRATION_UNITS:
            out.append(
                f"it is in {units}, not in activity concentration (Bq/mL or SUV) like the model's training "
                "images, so the network sees intensities it never learned: convert it to Bq/mL first."
            )
        elif units and not trained_on_concentration and units.upper() not in self.units:
            out.append(f"it is in {units}, while the model was trained on {', '.join(self.units)} images.")
        return out


def frame_warning(domain: Domain | None, index: int, duration_s: float | None) -> str | None:
    """A sentence when a dynamic frame is shorter than the shortest scan the model was trained on.

    Duration stands in for counts: the training scans' count levels are recorded in seconds of the same
    kind of whole-body scan, and a frame's noise grows as its duration shrinks. It is a rough guide (an early
    frame also shows a distribution unlike any static scan's), so it warns rather than refuses.
    """
    if domain is None or domain.count_levels_s is None or duration_s is None:
        return None
    shortest = domain.count_levels_s[0]
    if duration_s >= shortest:
        return None
    return (
        f"frame {index} lasts {duration_s:g} s, shorter than the shortest scan the model was trained on "
        f"({shortest:g} s), so it is likely noisier than any image the model knows: check the result."
    )


def domain_of(provenance: dict[str, Any]) -> Domain | None:
    """The model's recorded range; for files from before it was recorded, built from ``voxel_size_mm``."""
    raw = provenance.get("domain")
    if raw is not None:
        try:
            return Domain.from_json(raw)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            raise TgdpetError(
                "the model file's record of what it was trained on ('domain') is damaged; use the file it was "
                "copied from, or fine-tune or train the model again."
            ) from None
    size = provenance.get("voxel_size_mm")
    if size:
        voxel = tuple(float(v) for v in size)[::-1]  # recorded as (x, y, z)
        return Domain(voxel_min_mm=voxel, voxel_max_mm=voxel, units=("BQML",))  # type: ignore[arg-type]
    return None


def training_domain(
    voxels_mm: Sequence[Sequence[float]],
    units: Sequence[str],
    protocols: Sequence[str] = (),
    count_levels_s: Sequence[float] = (),
    tracer: str | None = None,
) -> Domain:
    """The range of a training set, from each image's voxel size ``(z, y, x)`` and units."""
    if not voxels_mm:
        raise ValueError("a training domain needs at least one image.")
    return Domain(
        voxel_min_mm=tuple(round(min(v[a] for v in voxels_mm), 4) for a in range(3)),  # type: ignore[arg-type]
        voxel_max_mm=tuple(round(max(v[a] for v in voxels_mm), 4) for a in range(3)),  # type: ignore[arg-type]
        units=tuple(dict.fromkeys(u.upper() for u in units)),
        protocols=tuple(dict.fromkeys(p for p in protocols if p)),
        count_levels_s=(float(min(count_levels_s)), float(max(count_levels_s))) if count_levels_s else None,
        tracer=tracer,
    )


__all__ = ["CONCENTRATION_UNITS", "COARSER_TOLERANCE", "Domain", "domain_of", "frame_warning", "training_domain"]
