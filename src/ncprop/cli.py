"""The ``ncprop`` command: ``run``, ``sweep``, ``report`` (and ``gate``, added by :mod:`ncprop.gate`).

Subcommands are registered in :data:`SUBCOMMANDS` as ``name -> "module:function"``; the function
receives the subparsers object and adds its parser with ``set_defaults(func=...)``. Modules are
imported only when their subcommand is parsed, so ``ncprop report`` does not import Ray and ``gate``
lives in its own module::

    ncprop run CONFIG.toml [--epochs 3 --lr 0.1 ...] [--out DIR]
    ncprop sweep PRESET|SWEEP.toml --out DIR [--executor local|ray] [--workers N] [--limit N]
    ncprop report DIR
    ncprop gate ...   (ncprop.gate.add_arguments / run_from_args, imported only for "gate")
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any, Callable, Sequence

SUBCOMMANDS: dict[str, str] = {
    "run": "ncprop.cli:add_run_parser",
    "sweep": "ncprop.cli:add_sweep_parser",
    "report": "ncprop.cli:add_report_parser",
    "gate": "ncprop.cli:add_gate_parser",
}


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


# ---------------------------------------------------------------------------------------------- run
def _config_flags(parser: argparse.ArgumentParser) -> None:
    from ncprop.experiments.config import RunConfig

    group = parser.add_argument_group("run options (override the file)")
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("model_options", "data_options", "tags"):
            group.add_argument(flag, type=json.loads, default=None, metavar="JSON", help=f"{f.name} as a JSON object")
        elif f.name == "metric_epochs":
            group.add_argument(flag, default=None, help="'log:N', 'every:K', 'all', 'final' or a JSON list")
        elif f.type in ("bool", bool):
            group.add_argument(flag, default=None, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                               metavar="BOOL")
        elif f.type in ("int", int):
            group.add_argument(flag, type=int, default=None)
        elif "float" in str(f.type):
            group.add_argument(flag, type=float, default=None)
        else:
            group.add_argument(flag, default=None)


def _config_from_args(args: argparse.Namespace):
    from ncprop.experiments.config import RunConfig, load_config

    names = {f.name for f in dataclasses.fields(RunConfig)}
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if isinstance(overrides.get("metric_epochs"), str) and overrides["metric_epochs"].startswith("["):
        overrides["metric_epochs"] = json.loads(overrides["metric_epochs"])
    if args.config:
        return load_config(args.config, **overrides)
    return RunConfig(**overrides)


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="train one run (TOML file and/or flags)")
    p.add_argument("config", nargs="?", help="a run TOML file")
    p.add_argument("--out", default=None, help="folder for the results database (default: print JSON only)")
    _config_flags(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    if args.out:
        from ncprop.experiments.executors import InlineExecutor
        from ncprop.experiments.sweep import run_sweep

        summary = run_sweep([config], args.out, executor=InlineExecutor())
        _out(json.dumps({"run_id": config.run_id, "db": str(summary.db_path), "counts": summary.counts}))
        return 0
    from ncprop.experiments.train import train_run

    result = train_run(config, show_progress=True)
    _out(json.dumps({"run_id": result.run_id, "status": result.status, "wall_s": round(result.wall_s, 3),
                     "final": result.final, "error": result.error}, default=str))
    return 0 if result.status != "failed" else 1


# ---------------------------------------------------------------------------------------------- sweep
def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a preset or a sweep TOML into a results folder (resumable)")
    p.add_argument("preset", help="paper, paper-ufm, paper-interpolation, paper-vit, toy, toy-mini, or FILE.toml")
    p.add_argument("--out", required=True, help="results folder (database, checkpoints, report)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (1: in this process)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto', 'ray://host:10001'); "
                                                   "default: a local Ray instance")
    p.add_argument("--limit", type=int, default=None, help="only the first N runs of the preset")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="print how many runs the preset expands to")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ncprop.experiments.executors import make_executor
    from ncprop.experiments.presets import expand
    from ncprop.experiments.sweep import run_sweep

    configs = expand(args.preset)
    if args.dry_run:
        _out(json.dumps({"preset": args.preset, "runs": len(configs[:args.limit] if args.limit else configs)}))
        return 0
    executor = make_executor(args.executor, workers=args.workers, address=args.address)
    summary = run_sweep(configs, args.out, executor=executor, limit=args.limit, retry_failed=args.retry_failed)
    _out(json.dumps({"runs": summary.total, "executed": summary.executed, "counts": summary.counts,
                     "wall_s": round(summary.wall_s, 1), "db": str(summary.db_path)}))
    return 0


# ---------------------------------------------------------------------------------------------- report
def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="figures, exports and a Markdown summary of a results folder")
    p.add_argument("dir", help="results folder written by 'ncprop sweep'")
    p.add_argument("--min-train-acc", type=float, default=0.99, help="analysis filter (default 0.99)")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ncprop.experiments.report import write_report

    summary = write_report(args.dir, min_train_acc=args.min_train_acc, figures=not args.no_figures)
    _out(str(summary))
    return 0


# ---------------------------------------------------------------------------------------------- gate
def add_gate_parser(sub) -> None:
    """``ncprop gate``: the regression gate's own arguments and entry point (:mod:`ncprop.gate`)."""
    from ncprop import gate

    p = sub.add_parser("gate", help="regression gate: theorem-level checks on an optimizer")
    gate.add_arguments(p)
    p.set_defaults(func=gate.run_from_args)


# ---------------------------------------------------------------------------------------------- main
def _resolve(target: str) -> Callable[[Any], None]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` (or all, for ``--help``) is imported."""
    parser = argparse.ArgumentParser(prog="ncprop", description="Optimizer choice and Neural Collapse.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    argv = list(argv or [])
    wanted = next((a for a in argv if not a.startswith("-")), None)
    if wanted not in SUBCOMMANDS:
        wanted = None  # an unknown or missing subcommand: build them all, so argparse lists the choices
    for name, target in SUBCOMMANDS.items():
        if wanted is not None and name != wanted:
            continue
        try:
            _resolve(target)(sub)
        except (ImportError, AttributeError):
            if name == wanted:
                raise
            sub.add_parser(name, help=f"(unavailable: {target} cannot be imported)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        parser.exit(2, f"ncprop {args.command}: error: {exc}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
