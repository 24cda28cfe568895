#!/usr/bin/env bash
# Builds covf with candle's CUDA backend on a machine without a GPU or a CUDA install.
#
#   tools/cuda-build.sh check            # cargo clippy --all-targets --features cuda -D warnings: lints and the
#                                        # CUDA build's compile check in one pass (nvcc + headers, ~100 MB of wheels)
#   tools/cuda-build.sh build [--cudnn]  # release build, stripped and xz-compressed into gpu/covf.xz
#
# nvcc 13.0, the CUDA headers and the link-time libraries come from PyPI (the `cuda-toolkit` wheels, the same
# CUDA 13.0 set as PyTorch's cu130 wheels), into $COVF_CUDA_PREFIX (default ~/.cache/covf-cuda13). libcuda.so
# ships with the driver, not with any wheel, so the linker gets a stub exporting the driver API's symbols;
# the stub is never shipped, and the binary binds the real driver on the GPU machine.
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/4090), COVF_CUDA_PREFIX.
# Running the binary on the GPU machine: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
cudnn=0
[ "${2:-}" = "--cudnn" ] && cudnn=1
case "$mode" in
  check | build) ;;
  *)
    echo "usage: tools/cuda-build.sh check | build [--cudnn]" >&2
    exit 2
    ;;
esac

prefix=${COVF_CUDA_PREFIX:-$HOME/.cache/covf-cuda13}
# clippy runs candle-kernels' build script (nvcc compiles the PTX) but links nothing.
extras=nvcc,crt,nvvm,cccl,cudart
[ "$mode" = build ] && extras=$extras,cublas,curand,nvrtc
[ -x "$prefix/venv/bin/pip" ] || python3 -m venv "$prefix/venv"
pip=$prefix/venv/bin/pip
# 13.0.2 pins nvcc 13.0.88: PTX from a newer nvcc would not load on a CUDA 13.0 driver.
"$pip" install -q --progress-bar off "cuda-toolkit[$extras]==13.0.2"
[ "$cudnn" = 1 ] && "$pip" install -q --progress-bar off "nvidia-cudnn-cu13==9.19.0.56"
sp=$("$prefix/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cu=$sp/nvidia/cu13
link=$prefix/link
mkdir -p "$link/lib/stubs"
# The wheels carry only versioned sonames (libcublas.so.13); the linker looks for libcublas.so.
for f in "$cu"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.[0-9]* "$sp"/nvidia/cudnn/lib/libcudnn.so.9; do
  [ -e "$f" ] && ln -sf "$f" "$link/lib/$(basename "$f" | sed -E 's/\.so\..*/.so/')"
done
if [ ! -e "$link/lib/stubs/libcuda.so" ]; then
  gcc -E -P "$cu/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
    | awk '{print "void " $1 "(void){}"}' >"$link/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/lib/stubs/libcuda.so" "$link/libcuda_stub.c"
fi

export PATH="$cu/bin:$PATH"
export CUDA_HOME=$link
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
features=cuda
[ "$cudnn" = 1 ] && features=cudnn
nvcc --version | tail -n 2

if [ "$mode" = check ]; then
  cargo clippy --all-targets --features "$features" -- -D warnings
  exit 0
fi
cargo build --release --features "$features"
mkdir -p gpu
strip -o gpu/covf target/release/covf
xz -T0 -6 -c gpu/covf >gpu/covf.xz.tmp && mv gpu/covf.xz.tmp gpu/covf.xz
ls -l gpu/covf gpu/covf.xz
echo "carry gpu/covf.xz to the GPU machine; docs/gpu.md says how to run it"
