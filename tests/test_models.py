"""The network presets: each one sees as far as its depth says."""

from __future__ import annotations

import pytest
import torch

from tgdpet.models import build_model


def field_of_view(preset: str, size: int = 81) -> tuple[int, int]:
    """Rows and columns of the input that move the centre output pixel (its gradient's nonzero extent)."""
    torch.manual_seed(0)
    model = build_model(preset, in_slices=5).eval()
    x = (torch.rand(1, 5, size, size) + 0.5).requires_grad_()
    model(x)[0, 2, size // 2, size // 2].backward()
    touched = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = touched.any(dim=1).nonzero(), touched.any(dim=0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("preset, layers", [("uniform64", 8), ("deep64", 17)])
def test_the_field_of_view_grows_by_two_pixels_per_3x3_layer(preset, layers):
    # Worked by hand: one 3x3 convolution reaches one pixel each way, so L of them reach L: 2 L + 1 pixels.
    assert field_of_view(preset) == (2 * layers + 1, 2 * layers + 1)


def test_deep64_is_the_original_dncnn_depth_at_uniform64_width():
    # Zhang et al. 2017: 17 layers of 64 channels; here the last one predicts the 5 input slices' noise.
    deep, uniform = build_model("deep64", in_slices=5), build_model("uniform64", in_slices=5)
    assert len(deep.convs) == 17 and {c.out_channels for c in deep.convs[:-1]} == {64}
    # 15 hidden 64-to-64 layers against uniform64's 6: 9 x (64 x 64 x 9 + 64) weights more, plus their BatchNorms.
    extra = 9 * (64 * 64 * 9 + 64) + 9 * 2 * 64
    assert sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in uniform.parameters()) == extra
