#!/usr/bin/env bash
# covf vs PyTorch on the same cores: the same models and training steps, run alternately, ratios printed.
#
#   bash bench/compare.sh                  # tiny net (1x28x28) and PreActResNet18 (3x32x32), batch 128
#   ROUNDS=5 THREADS=2 bash bench/compare.sh
#
# Knobs (environment): ROUNDS (alternations, default 3), THREADS (default: all cores), BATCH (128),
# TINY_STEPS / R18_STEPS (which steps per model), TINY_ITERS / R18_ITERS (timed steps per round),
# OUT (directory for the raw JSON, default bench/out). The first run creates bench/.venv with PyTorch
# from PyPI (~5 GB) and builds covf in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-$(nproc)}
BATCH=${BATCH:-128}
TINY_STEPS=${TINY_STEPS:-clean,fgsm,pgd10}
R18_STEPS=${R18_STEPS:-clean,fgsm,pgd10}
TINY_ITERS=${TINY_ITERS:-10}
R18_ITERS=${R18_ITERS:-2}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo build --release --quiet
COVF=target/release/covf
# Creates the venv on first use; a 1-step run keeps that out of the timed rounds.
python3 bench/peer_pytorch.py --steps clean --iters 1 --warmup 0 --batch-size 8 --json >/dev/null

configs=(
  "preact-tiny fmnist $TINY_STEPS $TINY_ITERS 2"
  "preact18 cifar10 $R18_STEPS $R18_ITERS 1"
)
for r in $(seq 1 "$ROUNDS"); do
  for cfg in "${configs[@]}"; do
    read -r arch ds steps iters warm <<<"$cfg"
    common=(--arch "$arch" --dataset "$ds" --batch-size "$BATCH" --steps "$steps" --threads "$THREADS"
      --iters "$iters" --warmup "$warm" --json)
    # Alternate which engine goes first, so drift (thermal, other load) does not favour one side.
    if (( r % 2 == 1 )); then order="covf torch"; else order="torch covf"; fi
    for eng in $order; do
      f="$OUT/$eng-$arch-r$r.json"
      echo "round $r/$ROUNDS: $eng $arch ($steps)" >&2
      if [[ $eng == covf ]]; then
        "$COVF" bench "${common[@]}" >"$f"
      else
        python3 bench/peer_pytorch.py "${common[@]}" >"$f"
      fi
    done
  done
done

python3 - "$OUT" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    eng = os.path.basename(f).split("-")[0]
    for r in json.load(open(f)):
        rows.setdefault((r["arch"], r["input"], r["step"]), {}).setdefault(eng, []).append(r["images_per_s"])
print(f"{'model':<12} {'input':<9} {'step':<7} {'covf img/s':>11} {'torch img/s':>12} {'covf/torch':>11}  (median over rounds)")
for (arch, inp, step), e in sorted(rows.items()):
    c = statistics.median(e.get("covf", [float("nan")]))
    t = statistics.median(e.get("torch", [float("nan")]))
    print(f"{arch:<12} {inp:<9} {step:<7} {c:>11.1f} {t:>12.1f} {c / t:>11.2f}")
EOF
