"""ncprop's pytest plugin (registered through the ``pytest11`` entry point).

- Hypothesis profiles, chosen by the environment variable ``NCPROP_HYPOTHESIS_PROFILE``
  (``dev`` by default, ``ci``, ``thorough``); see :mod:`ncprop.testing`.
- ``--ncprop-device``: the device for ``gpu``-marked tests (default: ``cuda`` when available,
  else ``cpu``), exposed as the ``ncprop_device`` fixture, so GPU tests also run on CPU at small
  scale.
"""

from __future__ import annotations

import os

import pytest
import torch

from ncprop.testing import load_hypothesis_profile


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ncprop")
    group.addoption(
        "--ncprop-device",
        action="store",
        default=os.environ.get("NCPROP_DEVICE"),
        help="device for gpu-marked ncprop tests (default: cuda if available, else cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    load_hypothesis_profile()


@pytest.fixture(scope="session")
def ncprop_device(request: pytest.FixtureRequest) -> torch.device:
    """The device gpu-marked tests run on; scale test sizes down when it is the CPU."""
    name = request.config.getoption("--ncprop-device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--ncprop-device={name!r} asked for CUDA but torch.cuda.is_available() is False")
    return device
