#!/usr/bin/env python3
"""How to load a covf checkpoint in PyTorch (the model below is plain PyTorch; nothing hidden):

    meta = safetensors.safe_open(path, "pt").metadata()      # arch, dataset, num_classes, normalization
    norm = json.loads(meta["normalization"])                  # {"mean": [...], "std": [...]}, per channel
    model = build_model(meta["arch"], int(meta["num_classes"]), len(norm["mean"]))
    model.load_state_dict(safetensors.torch.load_file(path), strict=True); model.eval()
    mean, std = (torch.tensor(norm[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    logits = model((x - mean) / std)                          # x: pixels in [0, 1], N x C x H x W

What this script owns: the PyTorch side of covf's checkpoint format, checked against covf itself.

  * Plain PyTorch definitions of covf's three architectures (src/models/mod.rs, src/models/preact.rs):
    preact-tiny (stem 16; widths 16-32-64, one block a stage), preact18 (stem 64; 64-128-256-512, two
    blocks a stage) and wrn34-10 (stem 16; 160-320-640, five blocks a stage), with covf's parameter
    names: PreAct `conv1`, `layer{s}.{i}.{bn1,conv1,bn2,conv2,shortcut.0}`, `bn`, `linear`; WideResNet
    (TRADES/MART names) `conv1`, `block{s}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`.
    Pre-activation block: o = relu(bn1(x)); shortcut = conv(o) when the shape changes, else x;
    out = conv2(relu(bn2(conv1(o)))) + shortcut. Head: relu(final bn), global average pool, linear.
    Convs have no bias, BatchNorm2d has PyTorch's defaults (eps 1e-5, momentum 0.1, num_batches_tracked).
  * Normalization. covf applies (x - mean) / std inside its model, so attacks work in pixel space; the
    checkpoint stores mean/std as the metadata key `normalization`, not as tensors. The PyTorch model here
    is the plain architecture WITHOUT normalization, as a PyTorch user's model usually is: the input is
    normalized before it, as a data pipeline would (`normalize` below). So `load_state_dict(strict=True)`
    takes the covf file as is, and `state_dict()` saved by `safetensors.torch.save_file` is a file covf
    reads back once told the architecture, dataset and normalization on its command line.

Checks (each exits non-zero when the largest logit difference exceeds --tol):
  covf→torch  `covf predict CHECKPOINT` writes x, y and covf's logits; the PyTorch model, loaded from
              the same file, computes logits on (x - mean) / std.
  torch→covf  the loaded model's state_dict() is saved with safetensors.torch.save_file (no metadata);
              `covf predict plain.safetensors --arch A --dataset D --normalize M/S` evaluates it.
With --random-init ARCH DATASET no covf checkpoint is needed: the PyTorch model gets random weights and
random, non-trivial BN statistics (eval-mode BN is then exercised), and only torch→covf is checked.

Usage:
  python3 tools/pytorch_interop.py checkpoints/RUN/epoch-010.safetensors [--n 64]
  python3 tools/pytorch_interop.py --random-init wrn34-10 fmnist --n 16
Runs itself inside bench/.venv (torch, numpy, safetensors), creating it on first use.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "bench", ".venv")
NEEDED = ("torch", "numpy", "safetensors")


def ensure_deps():
    """Re-executes this script inside bench/.venv unless torch, numpy and safetensors import here."""
    try:
        import numpy  # noqa: F401
        import safetensors  # noqa: F401
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit(f"{VENV} lacks one of {', '.join(NEEDED)}: run `{py} -m pip install {' '.join(NEEDED)}`")
    if not os.path.exists(py):
        print(f"creating {VENV} and installing {', '.join(NEEDED)} from PyPI (once; ~5 GB)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *NEEDED])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


if __name__ == "__main__":
    ensure_deps()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

# covf's src/data/mod.rs: (channels, classes) and the per-channel normalization of each dataset.
DATASETS = {
    "fmnist": (1, 10, [0.2860], [0.3530]),
    "mnist": (1, 10, [0.1307], [0.3081]),
    "cifar10": (3, 10, [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]),
    "cifar100": (3, 100, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
# covf's src/models/mod.rs (ArchSpec::new): stem width, widths, blocks a stage, strides, naming.
ARCHS = {
    "preact-tiny": (16, [16, 32, 64], [1, 1, 1], [1, 2, 2], "preact"),
    "preact18": (64, [64, 128, 256, 512], [2, 2, 2, 2], [1, 2, 2, 2], "preact"),
    "wrn34-10": (16, [160, 320, 640], [5, 5, 5], [1, 2, 2], "wrn"),
}


# ---------------------------------------------------------------------------------------------------
# The architectures, in plain PyTorch.


class PreActBlock(nn.Module):
    """Pre-activation block; the projection shortcut (when the shape changes) takes relu(bn1(x))."""

    def __init__(self, cin, cout, stride, naming):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.naming = naming
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            if naming == "preact":
                self.shortcut = nn.Sequential(conv)  # parameter name `shortcut.0.weight`
            else:
                self.convShortcut = conv  # parameter name `convShortcut.weight`

    def project(self):
        return getattr(self, "shortcut", None) if self.naming == "preact" else getattr(self, "convShortcut", None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        proj = self.project()
        s = proj(o) if proj is not None else x
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return o + s


class WrnStage(nn.Module):
    """One WideResNet stage: its blocks live under `layer` (names `block{s}.layer.{i}.…`)."""

    def __init__(self, blocks):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class PreActNet(nn.Module):
    """covf's PreActResNet / WideResNet without input normalization (apply `normalize` to the input)."""

    def __init__(self, arch, num_classes, in_channels):
        super().__init__()
        stem, widths, depths, strides, naming = ARCHS[arch]
        self.naming = naming
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        cin = stem
        for s, (w, d, stride0) in enumerate(zip(widths, depths, strides), start=1):
            blocks = []
            for i in range(d):
                blocks.append(PreActBlock(cin, w, stride0 if i == 0 else 1, naming))
                cin = w
            if naming == "preact":
                setattr(self, f"layer{s}", nn.Sequential(*blocks))
            else:
                setattr(self, f"block{s}", WrnStage(blocks))
        self.num_stages = len(widths)
        if naming == "preact":
            self.bn = nn.BatchNorm2d(cin)
            self.linear = nn.Linear(cin, num_classes)
        else:
            self.bn1 = nn.BatchNorm2d(cin)
            self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        o = self.conv1(x)
        prefix = "layer" if self.naming == "preact" else "block"
        for s in range(1, self.num_stages + 1):
            o = getattr(self, f"{prefix}{s}")(o)
        bn, head = (self.bn, self.linear) if self.naming == "preact" else (self.bn1, self.fc)
        o = F.relu(bn(o))
        # Global average pool (covf's global_avg_pool); for 32x32 inputs the same as TRADES' avg_pool2d(8).
        return head(o.mean(dim=(2, 3)))


def build_model(arch, num_classes, in_channels):
    if arch not in ARCHS:
        sys.exit(f"unknown architecture '{arch}': expected one of {', '.join(ARCHS)}")
    return PreActNet(arch, num_classes, in_channels)


def normalize(x, mean, std):
    """What a PyTorch data pipeline does (transforms.Normalize): pixels in [0, 1] to model input."""
    c = x.shape[1]
    return (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)


# ---------------------------------------------------------------------------------------------------
# covf's side.


def covf_predict(covf, target, n, out, data_dir, plain=None):
    """Runs `covf predict` and returns its x, y, logits; `plain` = (arch, dataset, mean, std)."""
    cmd = [covf, "predict", target, "--n", str(n), "--out", out]
    if plain is not None:
        arch, dataset, mean, std = plain
        cmd += ["--arch", arch, "--dataset", dataset, "--normalize", norm_arg(mean, std)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    print("$ " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"covf predict failed (exit status {r.returncode}): {' '.join(cmd)}")
    t = load_file(out)
    for k in ("x", "y", "logits"):
        if k not in t:
            sys.exit(f"{out} has no tensor '{k}' (tensors: {', '.join(sorted(t))})")
    return t["x"].float(), t["y"].long(), t["logits"].float()


def norm_arg(mean, std):
    """covf's --normalize syntax: MEAN/STD, comma-separated per channel (shortest text of each f32)."""
    return ",".join(str(np.float32(m)) for m in mean) + "/" + ",".join(str(np.float32(s)) for s in std)


def compare(name, ours, theirs, y):
    if ours.shape != theirs.shape:
        sys.exit(f"{name}: logits have shape {tuple(theirs.shape)} from covf, {tuple(ours.shape)} from PyTorch")
    d = (ours - theirs).abs().max().item()
    agree = (ours.argmax(1) == theirs.argmax(1)).sum().item()
    acc_t = (ours.argmax(1) == y).float().mean().item()
    acc_c = (theirs.argmax(1) == y).float().mean().item()
    print(f"  {name}: max|Δ| {d:.2e} (max|logit| {theirs.abs().max().item():.3g}), "
          f"argmax agree {agree}/{len(y)}, accuracy covf {acc_c:.4f} torch {acc_t:.4f}")
    return d, agree


# ---------------------------------------------------------------------------------------------------
# The checks.


def checkpoint_info(path, args):
    """(arch, dataset, num_classes, mean, std) from a covf checkpoint's metadata (or the flags)."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    arch = meta.get("arch") or args.arch
    dataset = meta.get("dataset") or args.dataset
    if not arch or not dataset:
        sys.exit(f"{path} has no covf metadata (arch, dataset): pass --arch and --dataset")
    if dataset not in DATASETS:
        sys.exit(f"unknown dataset '{dataset}': expected one of {', '.join(DATASETS)}")
    c, k, mean, std = DATASETS[dataset]
    if "normalization" in meta:
        norm = json.loads(meta["normalization"])
        mean, std = norm["mean"], norm["std"]
    k = int(meta.get("num_classes", k))
    if "format" not in meta:
        print(f"note: {path} is not a covf checkpoint; using --arch {arch} --dataset {dataset}", file=sys.stderr)
    return arch, dataset, k, mean, std, "format" in meta


def resolve_checkpoint(target):
    """A file as is; a run directory: its last epoch checkpoint."""
    if os.path.isdir(target):
        files = sorted(glob.glob(os.path.join(target, "epoch-*.safetensors")))
        if not files:
            sys.exit(f"{target} holds no epoch-*.safetensors")
        return os.path.abspath(files[-1])
    if not os.path.isfile(target):
        sys.exit(f"no such checkpoint: {target}")
    return os.path.abspath(target)


@torch.no_grad()
def randomize(model, c, size, seed):
    """Random weights, BN affine and BN running statistics (by a train-mode pass on random inputs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            m.momentum = None  # cumulative average: one pass sets the statistics to the batch's
            m.reset_running_stats()
    model.train()
    model(torch.randn(16, c, size, size, generator=g))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
            m.running_var.mul_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a covf checkpoint (epoch-NNN.safetensors) or run directory")
    p.add_argument("--covf", default="target/release/covf", help="covf binary (relative: to the repository root)")
    p.add_argument("--n", type=int, default=64, help="test images: the seeded N-image test subset `covf eval --n N` uses")
    p.add_argument("--data-dir", default=None, help="passed to covf predict")
    p.add_argument("--tol", type=float, default=1e-4, help="largest allowed |logit difference|")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the intermediate files in DIR")
    p.add_argument("--random-init", nargs=2, metavar=("ARCH", "DATASET"),
                   help="no checkpoint: random PyTorch weights, checked torch→covf")
    p.add_argument("--seed", type=int, default=0, help="for --random-init")
    p.add_argument("--arch", default=None, help="for a CHECKPOINT without covf metadata")
    p.add_argument("--dataset", default=None, help="for a CHECKPOINT without covf metadata")
    args = p.parse_args()
    if (args.checkpoint is None) == (args.random_init is None):
        p.error("give either CHECKPOINT or --random-init ARCH DATASET")
    covf = args.covf if os.path.isabs(args.covf) else os.path.join(ROOT, args.covf)
    if not os.path.isfile(covf):
        sys.exit(f"no covf binary at {covf}: build it (cargo build --release) or pass --covf")
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        tmp, cleanup = os.path.abspath(args.keep), None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="covf-interop-")
        tmp = cleanup.name
    try:
        return run(args, covf, data_dir, tmp)
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def run(args, covf, data_dir, tmp):
    deltas, parts, agrees = [], [], []
    if args.random_init:
        arch, dataset = args.random_init
        if dataset not in DATASETS:
            sys.exit(f"unknown dataset '{dataset}': expected one of {', '.join(DATASETS)}")
        c, k, mean, std = DATASETS[dataset]
        model = build_model(arch, k, c)
        size = 28 if c == 1 else 32
        randomize(model, c, size, args.seed)
        print(f"{arch} {dataset}: random init (seed {args.seed}), "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
    else:
        ckpt = resolve_checkpoint(args.checkpoint)
        arch, dataset, k, mean, std, is_covf = checkpoint_info(ckpt, args)
        model = build_model(arch, k, len(mean))
        model.load_state_dict(load_file(ckpt), strict=True)
        model.eval()
        print(f"{arch} {dataset}: {ckpt}")
        plain = None if is_covf else (arch, dataset, mean, std)
        x, y, logits_covf = covf_predict(covf, ckpt, args.n, os.path.join(tmp, "covf.safetensors"), data_dir, plain)
        with torch.no_grad():
            logits_torch = model(normalize(x, mean, std))
        d, agree = compare("covf→torch", logits_torch, logits_covf, y)
        deltas.append(d)
        parts.append(f"covf→torch max|Δ| {d:.1e}")
        agrees.append(agree)
        x_first = x

    # torch→covf: the state dict as PyTorch saves it, no covf metadata.
    plain_path = os.path.join(tmp, "plain.safetensors")
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, plain_path)
    x, y, logits_covf = covf_predict(covf, plain_path, args.n, os.path.join(tmp, "plain-pred.safetensors"),
                                     data_dir, (arch, dataset, mean, std))
    if not args.random_init and not torch.equal(x, x_first):
        sys.exit("covf predict gave different images for the checkpoint and for the plain state dict")
    with torch.no_grad():
        logits_torch = model(normalize(x, mean, std))
    d, agree = compare("torch→covf", logits_torch, logits_covf, y)
    deltas.append(d)
    parts.append(f"torch→covf max|Δ| {d:.1e}")
    agrees.append(agree)
    agree_txt = " and ".join(sorted({f"{a}/{len(y)}" for a in agrees}))
    print(f"{arch} {dataset}: {', '.join(parts)} ({len(y)} images, argmax agree {agree_txt})")
    worst = max(deltas)
    if not np.isfinite(worst) or worst > args.tol:
        print(f"FAIL: max|Δ| {worst:.2e} exceeds --tol {args.tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
