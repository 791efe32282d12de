"""``ncprop gate``: does an optimizer behave like coupled or like decoupled weight decay, as far as
Neural Collapse is concerned?

The gate *measures* the NC0 regime of an optimizer on three training problems and compares it with
what the user expects, then runs the theorem-level checks of :mod:`ncprop.checks` that apply:

1. The ETF unconstrained-feature model of T3/T4 (``H = E`` fixed, ``W_0 = 0``, full batch, lr / 10
   per stage). Decoupled sign-like methods keep ``W_t = w_t (J - 2I)``, whose normalized NC0 is
   exactly ``(K-2)/sqrt(K)`` (:func:`ncprop.checks.plateau_value`); coupled ones fall below a tenth
   of it (:func:`ncprop.checks.regime_thresholds`).
2. A UFM with trainable features from a random ``W`` (the ETF start keeps ``W^T 1 = 0`` for any
   linear method): ``NC0_T / NC0_0`` and whether ``W^T 1`` moved at all.
3. A small real model (an MLP on a Gaussian mixture, mini-batches): NC0 and normalized NC0 at the
   start and the end, reported as evidence.

Measured regime: ``conserves`` when ``W^T 1`` does not move on (2) (relative change <= 1e-9) and
stays 0 on (1); ``plateaus`` when (1) ends at or above 0.9 of the plateau value; ``decays`` when
(1) ends at or below 0.1 of it and (2) shrinks NC0 by at least 10%; ``inconclusive`` otherwise.

Exit codes (:func:`main` and ``ncprop gate``): 0 the verdict matches the expectation (or none was
given) and every applicable check passed; 1 the verdict contradicts the expectation or a check
failed; 2 the optimizer could not be loaded or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ncprop import checks
from ncprop.checks import CheckResult
from ncprop.optim.registry import REGISTRY, OptimizerInfo
from ncprop.targets import EXPECTATIONS, REGIME_OF_EXPECTATION, TargetError, load_target, parse_kwargs

__all__ = ["RegimeMeasurement", "GateReport", "measure_regime", "check_parity", "run_gate", "main",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_EXPECT_OF_REGIME = {regime: expect for expect, regime in REGIME_OF_EXPECTATION.items()}
CONSERVED_RTOL = 1e-9
DECAY_RATIO = 0.9


@dataclass
class RegimeMeasurement:
    """The measured regime with its evidence and the curves behind it (normalized NC0 per step)."""

    regime: str
    evidence: dict[str, Any]
    curves: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class GateReport:
    optimizer: str
    expected: str | None
    measurement: RegimeMeasurement
    results: list[CheckResult]

    @property
    def verdict_matches(self) -> bool:
        return self.expected is None or self.measurement.regime == self.expected

    @property
    def passed(self) -> bool:
        return self.verdict_matches and all(r.passed for r in self.results)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "expected": self.expected,
            "measured": self.measurement.regime,
            "verdict_matches": self.verdict_matches,
            "passed": self.passed,
            "evidence": self.measurement.evidence,
            "checks": [{"claim": r.claim, "passed": r.passed, "message": r.message} for r in self.results],
        }


def _normalized(rec: checks.TrainRecord) -> list[float]:
    norms = rec.weight_norms.clamp_min(1e-300)
    return (torch.linalg.vector_norm(rec.row_sums, dim=-1) / norms).tolist()


def measure_regime(optimizer: checks.OptimizerLike, *, weight_decay: float = 0.05, lr: float = 0.05,
                   num_classes: int = 4, steps_per_stage: int = 150, stages: int = 3, mlp_steps: int = 300,
                   seed: int = 0, hp: dict[str, Any] | None = None) -> RegimeMeasurement:
    """Measure the NC0 regime of ``optimizer`` at ``weight_decay`` (module docstring: the rule)."""
    info = checks.resolve(optimizer)
    hp = {**dict(hp or {}), "weight_decay": weight_decay}
    lrs = checks.constant_then_step_lrs(lr, steps_per_stage, stages)
    plateau = checks.plateau_value(num_classes)

    etf = checks.train(checks.make_problem("etf", num_classes, seed=seed), info, hp, lrs)
    ufm = checks.train(checks.make_problem("ufm", num_classes, seed=seed, bias=False), info, hp, lrs)
    mlp = checks.train(checks.make_problem("mlp", num_classes, seed=seed), info, hp, [lr] * mlp_steps,
                       batch_size=8, seed=seed)

    etf_curve = [0.0 if not math.isfinite(v) else v for v in _normalized(etf)]
    etf_final = etf_curve[-1]
    m0 = ufm.row_sums[0].norm()
    ufm_ratio = float(ufm.row_sums[-1].norm() / m0)
    ufm_change = float((ufm.row_sums - ufm.row_sums[0]).norm(dim=-1).max() / m0)
    mlp_nc0 = torch.linalg.vector_norm(mlp.row_sums, dim=-1)
    no_decay = checks.train(checks.make_problem("ufm", num_classes, seed=seed, bias=False), info,
                            {**hp, "weight_decay": 0.0}, [lr] * steps_per_stage)
    no_decay_change = float((no_decay.row_sums - no_decay.row_sums[0]).norm(dim=-1).max() / no_decay.row_sums[0].norm())
    evidence: dict[str, Any] = {
        "weight_decay": weight_decay, "lr": lr, "schedule": f"{stages} stages of {steps_per_stage} steps, lr/10 each",
        "num_classes": num_classes,
        "etf_ufm_nc0_normalized_final": etf_final, "plateau_value": plateau,
        "ufm_nc0_ratio": ufm_ratio, "ufm_row_sum_relative_change": ufm_change,
        "mlp_nc0_initial": float(mlp_nc0[0]), "mlp_nc0_final": float(mlp_nc0[-1]),
        "mlp_nc0_normalized_initial": _normalized(mlp)[0], "mlp_nc0_normalized_final": _normalized(mlp)[-1],
        "without_decay_row_sum_relative_change": no_decay_change,
        "without_decay": "conserves W^T 1" if no_decay_change <= CONSERVED_RTOL else "moves W^T 1",
        "diverged": [name for name, rec in (("etf", etf), ("ufm", ufm), ("mlp", mlp), ("no decay", no_decay))
                     if rec.diverged],
    }
    if evidence["diverged"]:
        regime = "inconclusive"
    elif ufm_change <= CONSERVED_RTOL and etf_final <= 0.1 * plateau:
        regime = "conserves"
    elif etf_final >= 0.9 * plateau:
        regime = "plateaus"
    elif etf_final <= 0.1 * plateau and ufm_ratio <= DECAY_RATIO:
        regime = "decays"
    else:
        regime = "inconclusive"
    curves = {"ETF UFM (normalized NC0)": etf_curve, "random UFM (normalized NC0)": _normalized(ufm),
              "MLP, mini-batch (normalized NC0)": _normalized(mlp)}
    return RegimeMeasurement(regime, evidence, curves)


def check_parity(optimizer: checks.OptimizerLike, reference: checks.OptimizerLike, *, steps: int = 30,
                 rtol: float = 1e-10, seed: int = 0, hp: dict[str, Any] | None = None) -> CheckResult:
    """Step-for-step parity with a declared reference on a small MLP with mini-batches (float64)."""
    info, ref = checks.resolve(optimizer), checks.resolve(reference)
    hp = {"momentum": 0.9, "weight_decay": 0.01, **dict(hp or {})}
    ref_hp = {k: v for k, v in hp.items() if k not in ref.fixed or ref.fixed[k] == v}
    runs = []
    for candidate, candidate_hp in ((info, hp), (ref, ref_hp)):
        problem = checks.make_problem("mlp", 4, seed=seed)
        runs.append(checks.train(problem, candidate, candidate_hp, [0.05] * steps, batch_size=8, seed=seed,
                                 keep_weights=True))
    worst, at = 0.0, 0
    for t, (a, b) in enumerate(zip(runs[0].weights, runs[1].weights)):
        err = float((a - b).norm() / b.norm().clamp_min(1e-300))
        if err > worst:
            worst, at = err, t
    evidence = {"reference": ref.name, "max_relative_difference": worst, "at_step": at, "rtol": rtol, "steps": steps}
    if not worst <= rtol:
        return CheckResult("parity", False, f"parity violated: W differs from {ref.name}'s by {worst:.3e} "
                           f"(relative) at step {at}", evidence)
    return CheckResult("parity", True, f"parity holds: equal to {ref.name} to {worst:.1e} over {steps} steps",
                       evidence)


def run_gate(target: OptimizerInfo, *, expect: str | None = None, reference: str | None = None,
             weight_decay: float = 0.05, lr: float = 0.05) -> GateReport:
    """Measure ``target``'s regime and run the checks that apply.

    ``expect`` defaults to the regime ``target`` declares. With ``reference`` (a registry name), the
    target is also held to the reference's declarations (coupling, sign-likeness: the theorem
    checks that apply to the reference apply to it) and compared with it step for step.
    """
    if expect is not None and expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {', '.join(EXPECTATIONS)}; got {expect!r}")
    declared = target
    results: list[CheckResult] = []
    if reference is not None:
        ref = checks.resolve(reference)
        declared = replace(target, coupling=ref.coupling, sign_like=ref.sign_like, regime=ref.regime,
                           regime_without_decay=ref.regime_without_decay, fixed=dict(ref.fixed),
                           coupled_share=ref.coupled_share)
        results.append(check_parity(target, ref))
    if expect is None and declared.regime is not None:
        expect = _EXPECT_OF_REGIME.get(declared.predicted_regime(weight_decay) or "")
    if declared.coupling in ("coupled", "decoupled", "mixed"):
        results.extend(checks.run_checks(declared))
    else:  # nothing declared: the claims that hold for every optimizer
        results.append(checks.run_check("lemma", checks.check_zero_sum_lemma, {"optimizer": declared}))
        results.append(checks.run_check("Prop2.1", checks.check_prop21, {"optimizer": declared}))
    measurement = measure_regime(declared, weight_decay=weight_decay, lr=lr)
    return GateReport(target.name, expect, measurement, results)


def format_report(report: GateReport) -> str:
    m = report.measurement
    ev = m.evidence
    lines = [
        f"ncprop gate: {report.optimizer}",
        f"  measured NC0 regime: {m.regime}" + (f" (expected: {report.expected})" if report.expected else ""),
        f"  ETF UFM: normalized NC0 at the end {ev['etf_ufm_nc0_normalized_final']:.4g} "
        f"(plateau value (K-2)/sqrt(K) = {ev['plateau_value']:.4g}; decays <= {0.1 * ev['plateau_value']:.4g}, "
        f"plateaus >= {0.9 * ev['plateau_value']:.4g})",
        f"  random UFM: NC0_T / NC0_0 = {ev['ufm_nc0_ratio']:.4g}, "
        f"max relative change of W^T 1 = {ev['ufm_row_sum_relative_change']:.3g}",
        f"  MLP (mini-batch): NC0 {ev['mlp_nc0_initial']:.4g} -> {ev['mlp_nc0_final']:.4g}, normalized "
        f"{ev['mlp_nc0_normalized_initial']:.4g} -> {ev['mlp_nc0_normalized_final']:.4g}",
        f"  lambda = 0 (random UFM): {ev['without_decay']} (max relative change "
        f"{ev['without_decay_row_sum_relative_change']:.3g})",
        f"  (lambda = {ev['weight_decay']}, lr = {ev['lr']}, {ev['schedule']})",
        "  checks:",
    ]
    lines += [f"    [{'PASS' if r.passed else 'FAIL'}] {r.message}" for r in report.results]
    if report.passed:
        verdict = "PASS"
    elif not report.verdict_matches:
        verdict = f"FAIL: measured regime {m.regime!r} contradicts the expected {report.expected!r}"
    else:
        verdict = "FAIL: " + "; ".join(r.claim for r in report.results if not r.passed) + " failed"
    lines.append(f"  verdict: {verdict}")
    return "\n".join(lines)


def save_figure(report: GateReport, path: Path) -> Path:
    """A small figure of the measured curves (normalized NC0 per step, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), constrained_layout=True)
    for label, curve in report.measurement.curves.items():
        values = [max(v, 1e-16) for v in curve]
        ax.plot(range(len(values)), values, label=label)
    plateau = report.measurement.evidence["plateau_value"]
    ax.axhline(plateau, color="grey", ls="--", lw=0.8, label="plateau (K-2)/sqrt(K)")
    ax.axhline(0.1 * plateau, color="grey", ls=":", lw=0.8, label="decay bound")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\|W^\top 1\| / \|W\|$")
    ax.set_title(f"{report.optimizer}: {report.measurement.regime}")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="MODULE:FACTORY",
                        help="a module (or .py file) and a factory(params, **hp) or an OptimizerInfo in it")
    parser.add_argument("--expect", choices=EXPECTATIONS, help="the NC0 regime the optimizer should show")
    parser.add_argument("--kwargs", default=None, help="fixed keyword arguments for the factory: a=1,b=0.5")
    parser.add_argument("--reference", default=None,
                        help="a registered optimizer the target claims to be (e.g. sgd): its theorem checks "
                             "apply, and parity with it is checked step for step")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="lambda for the regime runs")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate for the regime runs")
    parser.add_argument("--out", type=Path, default=Path("ncprop-gate"), help="folder for the figure and JSON")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def run_from_args(args: argparse.Namespace) -> int:
    """The CLI entry point. The gate's models are tiny, so torch runs single-threaded (its thread pool
    only adds contention at this size)."""
    torch.set_num_threads(1)
    try:
        target = load_target(args.target, expect=args.expect, kwargs=parse_kwargs(args.kwargs))
        if args.reference is not None and args.reference not in REGISTRY:
            raise TargetError(f"--reference must name a registered optimizer ({', '.join(sorted(REGISTRY))}); "
                              f"got {args.reference!r}")
    except TargetError as exc:
        _out(f"ncprop gate: error: {exc}")
        return EXIT_USAGE
    report = run_gate(target, expect=args.expect, reference=args.reference, weight_decay=args.weight_decay,
                      lr=args.lr)
    _out(format_report(report))
    args.out.mkdir(parents=True, exist_ok=True)
    figure = save_figure(report, args.out / f"gate-{report.optimizer}.png")
    (args.out / f"gate-{report.optimizer}.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    _out(f"  evidence: {figure} and {figure.with_suffix('.json')}")
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ncprop gate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
