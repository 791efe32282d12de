"""``ncprop report DIR``: figures (PNG and PDF) and a Markdown summary from a sweep's database.

Analysis filter: a run enters the figures and tables only if it finished (``done``) with a final
training accuracy of at least ``min_train_acc`` (0.99, the paper's filter); nothing is deleted
from the database, and the summary lists how many runs each optimizer kept.

Figures, one set per sweep part (``ufm``, ``mnist1d``, ``resnet9-cifar10``...):

- ``nc_over_epochs_<part>``: NC0, NC1, NC2 (ETF distance of the means), NC3 over epochs per
  optimizer, runs with weight decay > 0: median and the 10-90% band over seeds and hyperparameters.
- ``final_vs_wd_<part>``: final NC0 and NC3 against the weight decay per optimizer (median and range).
- ``sgd_heatmap_<part>``: final NC0 of SGD over momentum x weight decay.
- ``nc0_theory_<part>``: measured NC0 against :func:`ncprop.theory.predict_nc0_trajectory` for the
  SGD family (exact for any backbone, so points lie on the diagonal down to float precision).

Summary verdict per part: whether the paper's coupled-vs-decoupled NC0 gap holds (:func:`coupled_gap`:
every coupled optimizer's median final NC0 at least one order of magnitude below every decoupled
sign-like one), with the numbers; "partial" names the optimizers for which it does not.

Verdict per optimizer: ``decays`` when the median final NC0 of its runs with weight decay is below
``decay_ratio`` (1e-2) times the median initial NC0, else ``plateaus``; printed next to the regime the
optimizer registry predicts.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncprop.experiments.store import ResultStore

MIN_TRAIN_ACC = 0.99
DECAY_RATIO = 1e-2
PANEL_METRICS = (("nc0", "NC0  $\\|W^\\top 1\\|$"), ("nc1", "NC1  Tr$(\\Sigma_W\\Sigma_B^\\dagger)/K$"),
                 ("nc2", "NC2  ETF distance of means"), ("nc3", "NC3  self-duality"))
TABLE_METRICS = ("nc0", "nc0_normalized", "nc1", "nc2", "nc3", "nc4")
OPT_LABELS = {"sgd": "SGD", "sgdw": "SGDW", "adam": "Adam", "adamw": "AdamW", "adam_mix": "Adam/AdamW mix",
              "signgd": "SignGD", "signgd_w": "SignGDW", "signum": "Signum", "signum_w": "SignumW", "lion": "Lion"}


@dataclass
class Run:
    run_id: str
    part: str
    config: dict[str, Any]
    status: str
    history: list[tuple[int, dict[str, float]]]

    @property
    def optimizer(self) -> str:
        return self.config["optimizer"]

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1][1] if self.history else {}

    @property
    def initial(self) -> dict[str, float]:
        return self.history[0][1] if self.history else {}

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(e, m[key]) for e, m in self.history if key in m and m[key] is not None]
        if not pts:
            return np.zeros(0), np.zeros(0)
        e, v = zip(*pts)
        return np.asarray(e, float), np.asarray(v, float)


def _label(opt: str) -> str:
    return OPT_LABELS.get(opt, opt)


def _coupling(opt: str) -> str:
    try:
        from ncprop.optim import get

        return get(opt).coupling
    except ValueError:
        return "?"


def _predicted(opt: str, runs: list[Run]) -> str:
    """The regime the registry predicts for these runs' weight decay and coupled share; "none" where
    theory makes no prediction (a mix strictly between coupled and decoupled decay)."""
    try:
        from ncprop.optim import get

        info = get(opt)
    except ValueError:
        return "?"
    predictions = {info.predicted_regime(r.config["weight_decay"], r.config.get("coupled_share"))
                   for r in runs} or {info.regime}
    return "/".join(sorted(p or "none" for p in predictions))


def _order(opts) -> list[str]:
    known = list(OPT_LABELS)
    return sorted(opts, key=lambda o: (known.index(o) if o in known else len(known), o))


def load_runs(store: ResultStore) -> list[Run]:
    runs = []
    for r in store.runs():
        part = r["part"] or f"{r['model']}-{r['dataset']}"
        runs.append(Run(r["run_id"], part, r["config"], r["status"], store.history(r["run_id"])))
    return runs


def kept(runs: list[Run], min_train_acc: float = MIN_TRAIN_ACC) -> list[Run]:
    return [r for r in runs if r.status == "done" and r.final.get("train_acc", 0.0) >= min_train_acc]


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2e}" if (abs(x) < 1e-2 or abs(x) >= 1e3) and x != 0 else f"{x:.3f}"


def _median(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 7, "figure.dpi": 150,
                         "axes.grid": True, "grid.alpha": 0.3, "savefig.bbox": "tight"})
    return plt


def _colors(opts: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {o: cmap(i % 10) for i, o in enumerate(opts)}


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p)
        paths.append(p)
    _plt().close(fig)
    return paths


def _positive(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, v, np.nan)


def plot_over_epochs(runs: list[Run], part: str, out: Path) -> list[Path]:
    plt = _plt()
    decayed = [r for r in runs if r.config["weight_decay"] > 0]
    opts = _order({r.optimizer for r in decayed})
    if not opts:
        return []
    colors = _colors(opts)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (key, title) in zip(axes, PANEL_METRICS):
        for opt in opts:
            rs = [r for r in decayed if r.optimizer == opt]
            epochs = sorted({e for r in rs for e in r.series(key)[0] if e > 0})
            if not epochs:
                continue
            grid = np.full((len(rs), len(epochs)), np.nan)
            for i, r in enumerate(rs):
                e, v = r.series(key)
                lookup = dict(zip(e, v))
                grid[i] = [lookup.get(x, np.nan) for x in epochs]
            grid = _positive(grid)
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = np.nanmedian(grid, 0)
                    lo, hi = np.nanpercentile(grid, 10, 0), np.nanpercentile(grid, 90, 0)
            ls = "--" if _coupling(opt) == "decoupled" else "-"
            ax.plot(epochs, med, ls, color=colors[opt], label=f"{_label(opt)} ({len(rs)})", lw=1.4)
            ax.fill_between(epochs, lo, hi, color=colors[opt], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
    axes[0].legend(loc="lower left", ncol=1)
    fig.suptitle(f"{part}: NC metrics over training (weight decay > 0; median, 10-90% band; "
                 f"dashed = decoupled decay)")
    return _save(fig, out, f"nc_over_epochs_{part}")


def plot_final_vs_wd(runs: list[Run], part: str, out: Path) -> list[Path]:
    plt = _plt()
    opts = _order({r.optimizer for r in runs})
    if not opts:
        return []
    colors = _colors(opts)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    wds_pos = sorted({r.config["weight_decay"] for r in runs if r.config["weight_decay"] > 0})
    for ax, key in zip(axes, ("nc0", "nc3")):
        for opt in opts:
            by_wd: dict[float, list[float]] = defaultdict(list)
            for r in runs:
                if r.optimizer == opt and r.final.get(key) is not None:
                    by_wd[r.config["weight_decay"]].append(r.final[key])
            xs = sorted(by_wd)
            med = [_median(by_wd[x]) for x in xs]
            lo = [min(by_wd[x]) for x in xs]
            hi = [max(by_wd[x]) for x in xs]
            ls = "--" if _coupling(opt) == "decoupled" else "-"
            ax.errorbar(xs, med, yerr=[np.subtract(med, lo), np.subtract(hi, med)], fmt="o" + ls,
                        color=colors[opt], label=_label(opt), ms=3, lw=1.2, capsize=2)
        ax.set_xscale("symlog", linthresh=(wds_pos[0] if wds_pos else 1e-4))
        ax.set_yscale("log")
        ax.set_xlabel("weight decay $\\lambda$ (0 at the left)")
        ax.set_ylabel(f"final {key.upper()}")
    axes[1].legend(loc="best", ncol=2)
    fig.suptitle(f"{part}: final NC0 and NC3 vs weight decay (median over seeds and momenta, range as bars)")
    return _save(fig, out, f"final_vs_wd_{part}")


def plot_sgd_heatmap(runs: list[Run], part: str, out: Path) -> list[Path]:
    plt = _plt()
    sgd = [r for r in runs if r.optimizer == "sgd" and r.final.get("nc0") is not None]
    moms = sorted({r.config["momentum"] for r in sgd})
    wds = sorted({r.config["weight_decay"] for r in sgd})
    if len(moms) < 2 or len(wds) < 2:
        return []
    grid = np.full((len(moms), len(wds)), np.nan)
    for i, m in enumerate(moms):
        for j, w in enumerate(wds):
            grid[i, j] = _median([r.final["nc0"] for r in sgd
                                  if r.config["momentum"] == m and r.config["weight_decay"] == w])
    fig, ax = plt.subplots(figsize=(5, 3.8))
    with np.errstate(divide="ignore", invalid="ignore"):
        im = ax.imshow(np.log10(grid), origin="lower", cmap="viridis", aspect="auto")
    for i in range(len(moms)):
        for j in range(len(wds)):
            if math.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0e}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
    ax.set_yticks(range(len(moms)), [f"{m:g}" for m in moms])
    ax.set_xlabel("weight decay $\\lambda$")
    ax.set_ylabel("momentum $\\beta$")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="log$_{10}$ final NC0")
    ax.set_title(f"{part}: SGD final NC0 (median over seeds)")
    return _save(fig, out, f"sgd_heatmap_{part}")


def _theory_points(run: Run) -> list[tuple[float, float]]:
    from ncprop.experiments.schedules import lr_sequence
    from ncprop.theory import predict_nc0_trajectory

    c = run.config
    pts = [(e, m) for e, m in run.history if "nc0" in m and "step" in m]
    if len(pts) < 2 or pts[0][0] != 0:
        return []
    spe = next((int(m["step"]) // e for e, m in pts if e > 0), 0)
    if spe <= 0:
        return []
    lrs = lr_sequence(c["schedule"], c["lr"], steps_per_epoch=spe, epochs=c["epochs"], warmup=c["warmup"])
    pred = predict_nc0_trajectory(c["optimizer"], pts[0][1]["nc0"], lrs, c["momentum"], c["weight_decay"])
    return [(float(pred[int(m["step"])]), m["nc0"]) for e, m in pts[1:] if int(m["step"]) < len(pred)]


def plot_theory(runs: list[Run], part: str, out: Path) -> list[Path]:
    plt = _plt()
    family = [r for r in runs if r.optimizer in ("sgd", "sgdw") and r.status in ("done", "diverged")]
    if not family:
        return []
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    allv = []
    for opt, marker in (("sgd", "o"), ("sgdw", "s")):
        pts = [p for r in family if r.optimizer == opt for p in _theory_points(r)]
        pts = [(a, b) for a, b in pts if a > 0 and b > 0]
        if pts:
            a, b = zip(*pts)
            allv += [*a, *b]
            ax.scatter(a, b, s=8, marker=marker, alpha=0.6, label=f"{_label(opt)} ({len(pts)} points)")
    if not allv:
        plt.close(fig)
        return []
    lo, hi = min(allv) / 2, max(allv) * 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted NC0 (ncprop.theory, T1/T2)")
    ax.set_ylabel("measured NC0")
    ax.legend(loc="upper left")
    ax.set_title(f"{part}: NC0 of the SGD family vs closed form")
    return _save(fig, out, f"nc0_theory_{part}")


# ---------------------------------------------------------------------------------------------- summary
def summary_rows(runs: list[Run], all_runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for opt in _order({r.optimizer for r in all_runs}):
        rs_all = [r for r in all_runs if r.optimizer == opt]
        rs = [r for r in runs if r.optimizer == opt]
        strongest = max((r.config["weight_decay"] for r in rs), default=0.0)
        decayed = [r for r in rs if r.config["weight_decay"] == strongest and strongest > 0]
        row: dict[str, Any] = {"optimizer": opt, "coupling": _coupling(opt), "runs": len(rs_all), "kept": len(rs),
                               "weight_decay": strongest, "at_wd": len(decayed),
                               "diverged": sum(r.status == "diverged" for r in rs_all),
                               "predicted": _predicted(opt, decayed)}
        for key in TABLE_METRICS:
            row[key] = _median(r.final.get(key) for r in decayed)
        row["test_nc4"] = _median(r.final.get("test_nc4") for r in decayed)
        row["train_acc"] = _median(r.final.get("train_acc") for r in decayed)
        row["test_acc"] = _median(r.final.get("test_acc") for r in decayed)
        init = _median(r.initial.get("nc0") for r in decayed)
        row["nc0_ratio"] = row["nc0"] / init if init and math.isfinite(init) else float("nan")
        row["verdict"] = ("-" if not math.isfinite(row["nc0_ratio"]) else
                          "decays" if row["nc0_ratio"] < DECAY_RATIO else "plateaus")
        rows.append(row)
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["optimizer", "decay", "kept/runs", "λ (runs)", "NC0", "NC0/NC0(init)", "NC0 normalized", "NC1", "NC2", "NC3",
            "NC4 (test)", "train acc", "test acc", "verdict", "theory predicts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        nc4 = r["test_nc4"] if math.isfinite(r["test_nc4"]) else r["nc4"]
        lines.append("| " + " | ".join([
            _label(r["optimizer"]), r["coupling"], f"{r['kept']}/{r['runs']}", f"{r['weight_decay']:g} ({r['at_wd']})",
            _fmt(r["nc0"]), _fmt(r["nc0_ratio"]),
            _fmt(r["nc0_normalized"]), _fmt(r["nc1"]), _fmt(r["nc2"]), _fmt(r["nc3"]), _fmt(nc4),
            _fmt(r["train_acc"]), _fmt(r["test_acc"]), r["verdict"], r["predicted"]]) + " |")
    return lines


COUPLED_CONTRAST = ("sgd", "adam", "signgd", "signum")
DECOUPLED_CONTRAST = ("adamw", "signum_w", "signgd_w", "lion")
GAP_ORDERS = 1.0  # the gap "holds" when a coupled median NC0 is >= 10x below every decoupled one


def _log_gap(low: float, high: float) -> float:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= 0:
        return float("nan")
    return math.log10(high / low) if low > 0 else float("inf")


def coupled_gap(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's contrast on one part: each coupled optimizer's median final NC0 (and normalized
    NC0) against the smallest median of the decoupled sign-like ones, in orders of magnitude.

    ``verdict`` is ``"holds"`` when every coupled optimizer with kept runs is at least
    :data:`GAP_ORDERS` orders below every decoupled one, ``"partial"`` when some are, ``"fails"``
    when none is; None when either side has no kept runs.
    """
    def pick(names):
        return {r["optimizer"]: r for r in rows if r["optimizer"] in names and r["kept"]
                and math.isfinite(r["nc0"])}

    coupled, decoupled = pick(COUPLED_CONTRAST), pick(DECOUPLED_CONTRAST)
    if not coupled or not decoupled:
        return None
    floor = min(r["nc0"] for r in decoupled.values())
    floor_n = min(r["nc0_normalized"] for r in decoupled.values())
    per = {o: (_log_gap(r["nc0"], floor), _log_gap(r["nc0_normalized"], floor_n)) for o, r in coupled.items()}
    passed = [o for o, (g, _) in per.items() if g >= GAP_ORDERS]
    verdict = "holds" if len(passed) == len(per) else "partial" if passed else "fails"
    return {"verdict": verdict, "per": per, "passed": passed, "coupled": coupled, "decoupled": decoupled,
            "floor": floor, "floor_normalized": floor_n,
            "gap": min(g for g, _ in per.values()), "gap_normalized": min(g for _, g in per.values())}


def _contrast(rows: list[dict[str, Any]], part: str = "") -> str | None:
    g = coupled_gap(rows)
    if g is None:
        return None
    coupled = ", ".join(f"{_label(o)} {_fmt(r['nc0'])}" for o, r in g["coupled"].items())
    decoupled = ", ".join(f"{_label(o)} {_fmt(r['nc0'])}" for o, r in g["decoupled"].items())
    failed = [o for o in g["per"] if o not in g["passed"]]
    head = {"holds": "holds", "partial": "holds only in part", "fails": "does not hold"}[g["verdict"]]
    text = (f"Coupled-vs-decoupled NC0 gap{f' ({part})' if part else ''}: **{head}**. Median final NC0, coupled: "
            f"{coupled}; decoupled sign-like: {decoupled}. Smallest gap {g['gap']:.1f} orders of magnitude "
            f"(normalized NC0: {g['gap_normalized']:.1f}); the gap holds when a coupled optimizer's NC0 is at least "
            f"{GAP_ORDERS:g} order below every decoupled one.")
    if g["verdict"] == "partial":
        text += (" Holds for " + ", ".join(f"{_label(o)} ({g['per'][o][0]:.1f} orders)" for o in g["passed"])
                 + "; not for " + ", ".join(f"{_label(o)} ({g['per'][o][0]:.1f} orders)" for o in failed)
                 + " at this scale.")
    return text


def _verdict_line(part: str, rows: list[dict[str, Any]]) -> str:
    g = coupled_gap(rows)
    if g is None:
        return f"- {part}: no coupled-vs-decoupled comparison (an optimizer group has no kept runs)."
    if g["verdict"] == "holds":
        what = (f"holds: every coupled optimizer's median final NC0 is >= {g['gap']:.1f} orders of magnitude "
                f"below the smallest decoupled one ({_fmt(g['floor'])}); normalized NC0 "
                f"{g['gap_normalized']:.1f} orders")
    elif g["verdict"] == "partial":
        what = ("holds only in part: for " + ", ".join(f"{_label(o)} ({g['per'][o][0]:.1f} orders)" for o in g["passed"])
                + ", not for " + ", ".join(f"{_label(o)} ({g['per'][o][0]:.1f} orders)" for o in g["per"]
                                           if o not in g["passed"])
                + f" (smallest decoupled median final NC0 {_fmt(g['floor'])})")
    else:
        what = (f"does not hold: smallest gap {g['gap']:.1f} orders of magnitude (smallest decoupled median "
                f"final NC0 {_fmt(g['floor'])})")
    return f"- {part}: coupled-vs-decoupled NC0 gap {what}."


def write_report(out_dir: str | os.PathLike, *, min_train_acc: float = MIN_TRAIN_ACC,
                 figures: bool = True) -> Path:
    """Figures, CSV/Parquet exports and ``summary.md`` under ``out_dir/report``; returns the summary path."""
    from ncprop.progress import progress

    out_dir = Path(out_dir)
    with ResultStore(out_dir) as store:
        all_runs = load_runs(store)
        counts = store.status_counts()
        rep = out_dir / "report"
        rep.mkdir(parents=True, exist_ok=True)
        store.export_csv(rep / "metrics.csv")
        try:
            store.export_parquet(rep / "metrics.parquet")
            parquet = True
        except ImportError:
            parquet = False
    good = kept(all_runs, min_train_acc)
    parts = sorted({r.part for r in all_runs})
    lines = [f"# ncprop report: {out_dir}", "",
             f"Runs: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}). "
             f"Analysed: runs that finished with training accuracy >= {min_train_acc:.0%} "
             f"({len(good)} of {len(all_runs)}); nothing is removed from the database.", "",
             "Table entries are medians over the kept runs at each optimizer's strongest weight decay λ "
             "(over seeds, learning rates and momenta; the decoupled methods' λ lists are larger, as in the paper's grid). NC0 = ||W^T 1||, NC0 normalized = ||W^T 1|| / ||W||; NC4 is measured on the "
             f"test set where there is one. Verdict: *decays* when the final NC0 is below {DECAY_RATIO:g} x its "
             "initial value, else *plateaus*; the last column is the regime the optimizer registry predicts "
             "(THEORY.md).", ""]
    written: list[Path] = []
    part_rows = {part: summary_rows([r for r in good if r.part == part], [r for r in all_runs if r.part == part])
                 for part in parts}
    lines += ["Verdict (coupled SGD, Adam, SignGD, Signum vs decoupled AdamW, SignumW, SignGDW, Lion, at each "
              "optimizer's strongest kept λ):"] + [_verdict_line(part, part_rows[part]) for part in parts] + [""]
    for part in progress(parts, total=len(parts), desc="report"):
        part_all = [r for r in all_runs if r.part == part]
        part_good = [r for r in good if r.part == part]
        lines += [f"## {part}", ""]
        rows = part_rows[part]
        lines += _markdown_table(rows)
        contrast = _contrast(rows, part)
        if contrast:
            lines += ["", contrast]
        if figures:
            figs = (plot_over_epochs(part_good, part, rep) + plot_final_vs_wd(part_good, part, rep)
                    + plot_sgd_heatmap(part_good, part, rep) + plot_theory(part_all, part, rep))
            written += figs
            pngs = [p for p in figs if p.suffix == ".png"]
            if pngs:
                lines += [""] + [f"![{p.stem}]({p.name})" for p in pngs]
        lines.append("")
    lines += ["Exports: metrics.csv" + (", metrics.parquet" if parquet else " (Parquet needs pyarrow)") + "."]
    summary = rep / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
