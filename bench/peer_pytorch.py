#!/usr/bin/env python3
"""PyTorch peer of `covf bench`: the same models, the same training steps, the same JSON rows.

Not a dependency of covf. On first use it creates bench/.venv and installs PyTorch from PyPI into it
(about 5 GB: PyPI's Linux wheels bring the CUDA libraries), then re-runs itself there.

Steps timed (one optimizer step each, batch of seeded random inputs, SGD momentum 0.9, weight decay 5e-4):
  clean   forward (BN batch statistics), cross-entropy, backward, SGD step
  fgsm    zero-init FGSM (alpha = eps) input gradient, then the clean step on x + delta
  fgsm-rs uniform init, alpha = 1.25 eps, then the step
  pgdN    uniform start, N signed-gradient steps of eps/4 with projection, then the step
The attack passes take the input gradient only (torch.autograd.grad), so no weight gradient is computed
there: the cheapest way PyTorch offers, as covf's attacks also skip weight gradients.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")


def ensure_torch():
    try:
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("bench/.venv exists but has no torch: remove it and run again")
    if not os.path.exists(py):
        print(f"creating {VENV} and installing torch from PyPI (once; ~5 GB)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "torch", "numpy"])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


ensure_torch()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = {"fmnist": (1, 28, 10), "mnist": (1, 28, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}
# Per-channel normalization inside the model, as covf does (attacks work in pixel space).
NORM = {
    "fmnist": ([0.2860], [0.3530]),
    "mnist": ([0.1307], [0.3081]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
# (stem width, widths, blocks per stage, strides): covf's src/models/mod.rs.
ARCHS = {
    "preact-tiny": (16, [16, 32, 64], [1, 1, 1], [1, 2, 2]),
    "preact18": (64, [64, 128, 256, 512], [2, 2, 2, 2], [1, 2, 2, 2]),
    "wrn34-10": (16, [160, 320, 640], [5, 5, 5], [1, 2, 2]),
}


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        o = F.relu(self.bn1(x))
        s = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv1(o)
        o = self.conv2(F.relu(self.bn2(o)))
        return o + s


class PreActResNet(nn.Module):
    def __init__(self, arch, dataset):
        super().__init__()
        c, _, classes = SHAPES[dataset]
        mean, std = NORM[dataset]
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, c, 1, 1))
        stem, widths, depths, strides = ARCHS[arch]
        self.conv1 = nn.Conv2d(c, stem, 3, 1, 1, bias=False)
        blocks, cin = [], stem
        for w, d, s in zip(widths, depths, strides):
            for i in range(d):
                blocks.append(Block(cin, w, s if i == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        o = self.blocks(self.conv1((x - self.mean) * self.inv_std))
        o = F.relu(self.bn(o))
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.linear(o)


def input_grad(model, x, delta, y):
    delta.requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (g,) = torch.autograd.grad(loss, delta)
    return g


def attack(step, model, x, y, eps):
    if step == "clean":
        return None
    if step == "fgsm":
        d = torch.zeros_like(x)
        g = input_grad(model, x, d, y)
        return ((d + eps * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    if step == "fgsm-rs":
        d = torch.empty_like(x).uniform_(-eps, eps)
        g = input_grad(model, x, d, y)
        return ((d.detach() + 1.25 * eps * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    n = int(step[3:])
    d = ((torch.empty_like(x).uniform_(-eps, eps) + x).clamp(0, 1) - x).detach()
    for _ in range(n):
        g = input_grad(model, x, d, y)
        d = (((d.detach() + eps / 4 * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x).detach()
    return d


def bench_step(step, args, c, size, classes):
    torch.manual_seed(0)
    model = PreActResNet(args.arch, args.dataset)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(args.batch_size, c, size, size)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch_size,))
    times = []
    for i in range(args.warmup + args.iters):
        t = time.perf_counter()
        d = attack(step, model, x, y, args.eps)
        xa = x if d is None else x + d
        loss = F.cross_entropy(model(xa), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "step": step,
        "arch": args.arch,
        "input": f"{c}x{size}x{size}",
        "batch": args.batch_size,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "iters": args.iters,
        "median_s": med,
        "min_s": min(times),
        "images_per_s": args.batch_size / med,
        "engine": f"pytorch {torch.__version__}",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="preact-tiny", choices=sorted(ARCHS))
    p.add_argument("--dataset", default="fmnist", choices=sorted(SHAPES))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", default="clean,fgsm,pgd10")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c, size, classes = SHAPES[args.dataset]
    steps = [s.strip().lower() for s in args.steps.split(",") if s.strip()]
    for s in steps:
        if s not in ("clean", "fgsm", "fgsm-rs") and not (s.startswith("pgd") and s[3:].isdigit() and int(s[3:]) > 0):
            p.error(f"unknown step '{s}': expected clean, fgsm, fgsm-rs or pgdN")
    rows = []
    for s in steps:
        r = bench_step(s, args, c, size, classes)
        rows.append(r)
        if not args.json:
            print(f"{r['step']:<8} {r['arch']:<12} {r['input']:<9} {r['batch']:>5} {r['threads']:>7} "
                  f"{1e3 * r['median_s']:>10.1f} {r['images_per_s']:>10.1f}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
