import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device the device-aware tests run on (cpu, cuda)")


def pytest_collection_modifyitems(config, items):
    """Mark every test that takes the ``device`` fixture: ``-m device --device cuda`` runs them on a GPU
    (scripts/gpu_check.py)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture
def device(request) -> torch.device:
    return torch.device(request.config.getoption("--device"))
