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
        "--ncprop-optimizer",
        action="append",
        default=[],
        metavar="MODULE:FACTORY[=decays|plateaus|conserves]",
        help="add a user's optimizer to ncprop's registry so every registry-wide property runs on it; "
        "the optional suffix declares the NC0 regime it should show (repeatable)",
    )
    group.addoption(
        "--ncprop-device",
        action="store",
        default=os.environ.get("NCPROP_DEVICE"),
        help="device for gpu-marked ncprop tests (default: cuda if available, else cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    load_hypothesis_profile()
    for spec in config.getoption("--ncprop-optimizer") or []:
        register_user_optimizer(spec)


def register_user_optimizer(spec: str):
    """Register ``MODULE:FACTORY[=EXPECT]`` (see :mod:`ncprop.targets`) under the name ``FACTORY``.

    Registering happens before collection, so properties parametrized over the registry pick it up.
    """
    from ncprop.optim.registry import REGISTRY, register
    from ncprop.targets import TargetError, load_target

    target, _, expect = spec.partition("=")
    try:
        info = load_target(target, expect=expect or None)
    except TargetError as exc:
        raise pytest.UsageError(f"--ncprop-optimizer {spec}: {exc}") from exc
    if info.name in REGISTRY and REGISTRY[info.name] is not info:
        raise pytest.UsageError(f"--ncprop-optimizer {spec}: the name {info.name!r} is already registered")
    register(info, replace=True)
    return info


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
