"""Test-suite settings shared by ncprop's own suite and its users' suites."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "NCPROP_HYPOTHESIS_PROFILE"

settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def load_hypothesis_profile(name: str | None = None) -> str:
    """Load the profile ``name`` (default: ``$NCPROP_HYPOTHESIS_PROFILE`` or ``dev``)."""
    name = name or os.environ.get(PROFILE_ENV, "dev")
    if name not in {"dev", "ci", "thorough"}:
        raise ValueError(f"{PROFILE_ENV} must be one of 'dev', 'ci', 'thorough'; got {name!r}")
    settings.load_profile(name)
    return name
