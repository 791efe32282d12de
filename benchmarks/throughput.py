"""Training throughput of ResNet9, VGG9 and the ViT at the paper's input and batch sizes, and the
projected time of one 200-epoch run and of the whole 3,888-run grid (THEORY.md section 6).

    python benchmarks/throughput.py                 # quick on CPU (small batch, few steps)
    python benchmarks/throughput.py --iters 50      # on CUDA: bf16 autocast + channels_last CNNs
    python benchmarks/throughput.py --models resnet9 --batch-cnn 128 --compile

A step is forward + cross-entropy + backward + SGD(momentum 0.9) on data already on the device
(uint8 images normalised per batch, as ncprop.data does). Metric passes and evaluation are not
counted: the projection is a lower bound on wall time. Goal on one H200: grid <= 48 GPU-hours
(about 45 s per run).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ncprop.models import autocast_context, build_model

EPOCHS = 200
GRID_RUNS = 3888
# (data set, input shape, training images per epoch); each (model, data set) pair has 6 x 108 runs
DATASETS = [("mnist", (1, 28, 28), 60_000), ("fashionmnist", (1, 28, 28), 60_000),
            ("cifar10", (3, 32, 32), 50_000)]
RUNS_PER_MODEL_DATASET = GRID_RUNS // (2 * len(DATASETS))  # 648


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def measure(name: str, in_shape: tuple[int, ...], batch: int, iters: int, warmup: int,
            device: torch.device, compile_model: bool) -> float:
    """Training images per second."""
    cuda = device.type == "cuda"
    is_cnn = name in ("resnet9", "vgg9")
    model = build_model(name, in_shape=in_shape, num_classes=10, device=device, seed=0,
                        channels_last=is_cnn and cuda)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (batch, *in_shape), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def step() -> None:
        x = x_u8.float().div_(255.0)
        if is_cnn and cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, enabled=cuda):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    return batch * iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="resnet9,vgg9,vit")
    parser.add_argument("--batch-cnn", type=int, default=None, help="default 128 on CUDA, 16 on CPU")
    parser.add_argument("--batch-vit", type=int, default=None, help="default 512 on CUDA, 16 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 30 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch_cnn = args.batch_cnn or (128 if cuda else 16)
    batch_vit = args.batch_vit or (512 if cuda else 16)
    iters = args.iters or (30 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    label = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {label}; bf16 autocast + channels_last: {cuda}; compile: {args.compile}; "
          f"timed steps: {iters} after {warmup} warm-up")
    if not cuda and (batch_cnn != 128 or batch_vit != 512):
        print(f"note: CPU run with batch {batch_cnn} (CNN) / {batch_vit} (ViT), not the paper's 128 / 512; "
              "images/s is batch-dependent, so the projections are only indicative")
    print(f"{'model':8s} {'data':13s} {'input':10s} {'batch':>5s} {'img/s':>10s} {'200-ep run':>12s}")
    grid_seconds, grid_complete = 0.0, True
    for name in models:
        if name == "vit":
            ips = measure("vit", (3, 32, 32), batch_vit, iters, warmup, device, args.compile)
            run_s = EPOCHS * 50_000 / ips
            print(f"{'vit':8s} {'cifar10':13s} {'3x32x32':10s} {batch_vit:5d} {ips:10.1f} {_duration(run_s):>12s}"
                  "   (ablation, not in the grid)")
            continue
        cache: dict[tuple[int, ...], float] = {}
        for ds, shape, n in DATASETS:
            if shape not in cache:
                cache[shape] = measure(name, shape, batch_cnn, iters, warmup, device, args.compile)
            ips = cache[shape]
            run_s = EPOCHS * n / ips
            grid_seconds += RUNS_PER_MODEL_DATASET * run_s
            print(f"{name:8s} {ds:13s} {'x'.join(map(str, shape)):10s} {batch_cnn:5d} {ips:10.1f} "
                  f"{_duration(run_s):>12s}")
    if {"resnet9", "vgg9"} - set(models):
        grid_complete = False
    if grid_seconds:
        hours = grid_seconds / 3600
        share = "" if grid_complete else " (only the models measured: partial grid)"
        print(f"projected grid: {GRID_RUNS if grid_complete else GRID_RUNS // 2} runs x {EPOCHS} epochs = "
              f"{hours:,.1f} device-hours{share}; mean {_duration(grid_seconds / (GRID_RUNS if grid_complete else GRID_RUNS // 2))}/run "
              f"(goal: <= 48 h, ~45 s/run)")


if __name__ == "__main__":
    main()
