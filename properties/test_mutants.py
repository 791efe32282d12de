"""The suite must catch each deliberately broken optimizer with a message naming the violated claim."""

import pytest

from ncprop import checks
from ncprop.mutants import EXPECTED_VIOLATION, MUTANTS
from ncprop.optim import REGISTRY


@pytest.mark.fast
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught_with_the_claim_named(name):
    claim = EXPECTED_VIOLATION[name]
    failures = []
    for check_name, check, kwargs in checks.applicable_checks(MUTANTS[name]):
        if check_name != claim:
            continue
        result = check(**kwargs)
        if not result.passed:
            failures.append(result)
            break
    assert failures, f"no {claim} check failed on mutant {name}"
    assert failures[0].message.startswith(f"{claim} violated"), failures[0].message


@pytest.mark.fast
def test_mutants_are_not_registered():
    assert not set(MUTANTS) & set(REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_run_checks_reports_the_mutant(name):
    results = checks.run_checks(MUTANTS[name])
    assert any(not r.passed and r.claim == EXPECTED_VIOLATION[name] for r in results), [r.message for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGISTRY))
def test_run_checks_passes_on_the_registry(name):
    results = checks.run_checks(name)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]
