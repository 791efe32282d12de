"""Cost of the NC metrics against the products they cannot avoid, and against a p x p NC1.

For N = 50,000 samples, p = 512, K in {10, 100}, on the CPU (or ``--device``), measured in this run:

- full / products: one full streaming metric pass (``NCAccumulator``: update_means,
  finalize_means, update_scatter with precomputed logits, compute) divided by the time of the two
  matrix products every exact method needs (one-hot labels^T times features, features times the
  centred means^T), both at the accumulation dtype float64. Goal: <= 2.
- p x p NC1 / ours: NC1 the usual way (class means, Sigma_W and Sigma_B as p x p matrices,
  ``torch.linalg.pinv``, trace) divided by our full metric pass (which yields NC1 and every other
  metric). Goal: >= 10 at K = 10.

Times are the best of ``--repeats`` interleaved rounds (p x p: half as many). Prints ratios;
asserts nothing.

    python benchmarks/metrics.py [--n 50000] [--p 512] [--k 10 100] [--batches 1 10] [--threads T]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ncprop.metrics import NCAccumulator


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def make_problem(n: int, p: int, k: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    labels[:k] = torch.arange(k)  # no empty class
    means = 3 * torch.randn(k, p, generator=g, dtype=torch.float64)
    features = means[labels] + torch.randn(n, p, generator=g, dtype=torch.float64) + 1.0
    weight = torch.randn(k, p, generator=g, dtype=torch.float64) / p**0.5
    bias = torch.randn(k, generator=g, dtype=torch.float64)
    logits = features @ weight.T + bias
    return (t.to(device) for t in (features, labels, weight, bias, logits))


def streaming_pass(features, labels, weight, bias, logits, k: int, batches: int) -> dict:
    acc = NCAccumulator(k, features.shape[-1], device=features.device)
    chunks = list(zip(features.chunk(batches), labels.chunk(batches), logits.chunk(batches)))
    for h, y, _ in chunks:
        acc.update_means(h, y)
    acc.finalize_means()
    for h, y, z in chunks:
        acc.update_scatter(h, y, logits=z)
    return acc.compute(weight, bias)


def products(features, labels, centred, k: int) -> None:
    onehot = torch.nn.functional.one_hot(labels, k).to(features.dtype)
    onehot.T @ features
    features @ centred.T


def nc1_pxp(features, labels, k: int) -> float:
    """The usual route: p x p covariances and a p x p pseudo-inverse (for timing only)."""
    onehot = torch.nn.functional.one_hot(labels, k).to(features.dtype)
    means = (onehot.T @ features) / onehot.sum(0).unsqueeze(1)
    centred = means - means.mean(0)
    within = features - means[labels]
    sigma_w = within.T @ within / features.shape[0]
    sigma_b = centred.T @ centred / k
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)) / k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--p", type=int, default=512)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"N={args.n} p={args.p} device={device} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} (float64; best of {args.repeats})"
    )
    for k in args.k:
        features, labels, weight, bias, logits = make_problem(args.n, args.p, k, device)
        onehot = torch.nn.functional.one_hot(labels, k).to(features.dtype)
        means = (onehot.T @ features) / onehot.sum(0).unsqueeze(1)
        centred = means - means.mean(0)
        # interleave the measurements so that a noisy machine affects all of them alike
        t_products, t_pxp = float("inf"), float("inf")
        t_full = {batches: float("inf") for batches in args.batches}
        for round_ in range(args.repeats):
            t_products = min(
                t_products, best_time(lambda: products(features, labels, centred, k), 1, device)
            )
            for batches in args.batches:
                full = best_time(
                    lambda: streaming_pass(features, labels, weight, bias, logits, k, batches),
                    1,
                    device,
                )
                t_full[batches] = min(t_full[batches], full)
            if round_ < max(1, args.repeats // 2):
                t_pxp = min(t_pxp, best_time(lambda: nc1_pxp(features, labels, k), 1, device))
        ours_nc1 = float(streaming_pass(features, labels, weight, bias, logits, k, 1)["nc1"])
        ref_nc1 = nc1_pxp(features, labels, k)
        print(
            f"K={k:4d}: products {t_products * 1e3:8.1f} ms | p x p NC1 {t_pxp * 1e3:8.1f} ms "
            f"| NC1 ours {ours_nc1:.10g} vs p x p {ref_nc1:.10g}"
        )
        for batches in args.batches:
            print(
                f"    {batches:3d} batch(es): full pass {t_full[batches] * 1e3:8.1f} ms | "
                f"full / products = {t_full[batches] / t_products:5.2f} (goal <= 2) | "
                f"p x p NC1 / ours = {t_pxp / t_full[batches]:6.1f} (goal >= 10 at K=10)"
            )


if __name__ == "__main__":
    main()
