#!/usr/bin/env bash
# The GPU path's one prepared check (issue 9, part 5): at most 5 minutes, everything under $OUT
# (default target/gpu-check/): gpu-check.json, log.txt, snapshop.log.
#   1. CUDA-vs-CPU parity of shop.onnx, user.onnx and ctx.onnx (golden images + random inputs);
#   2. user.onnx batch-size sweep (1..64) per provider, images/s;
#   3. end-to-end: `snapshop serve --device cuda` with 12 MP JPEG searches at concurrency 1 and 16.
# Without a CUDA-enabled onnxruntime it runs the same in CPU mode and says so (parity then against
# golden.json, the sweep on the CPU provider, the service with --device cpu).
#
# Which onnxruntime: $GPU_PYTHON if set, else the first of .venv-gpu, .venv, python3 whose
# onnxruntime lists CUDAExecutionProvider, else the first that imports onnxruntime at all. For CUDA
# that is a venv with `onnxruntime-gpu` (1.31.x, CUDA 13) and the nvidia-* CUDA 13 wheels
# (/work/shared/GPU.md): their nvidia/*/lib folders are put on LD_LIBRARY_PATH here, and the
# service gets that wheel's libonnxruntime.so.1.* as ORT_DYLIB_PATH (the providers' .so files lie
# beside it). The service needs target/release/snapshop (cargo build --release --locked).
#
#   bash scripts/gpu-check.sh                 # OUT=target/gpu-check
#   OUT=/tmp/gc bash scripts/gpu-check.sh --e2e-seconds 60   # extra arguments go to gpu_check.py
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/target/gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/log.txt") 2>&1
echo "gpu-check: $(date -Is) on $(hostname), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

probe='import onnxruntime as o; print("cuda" if "CUDAExecutionProvider" in o.get_available_providers() else "cpu")'
candidates=()
[ -n "${GPU_PYTHON:-}" ] && candidates+=("$GPU_PYTHON")
for p in .venv-gpu/bin/python .venv/bin/python python3; do
  { [ -x "$p" ] || command -v "$p" >/dev/null; } && candidates+=("$p")
done
PY="" MODE=""
for p in "${candidates[@]}"; do
  # The CUDA wheels' libraries, so that the probe sees a provider that can really load.
  libs="$("$p" -c 'import glob, os, site
dirs = []
for s in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
print(":".join(dirs))' 2>/dev/null)"
  m="$(LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$p" -c "$probe" 2>/dev/null)" || continue
  if [ "$m" = cuda ]; then PY="$p" MODE=cuda CUDA_LIBS="$libs"; break; fi
  [ -z "$PY" ] && PY="$p" MODE=cpu CUDA_LIBS="$libs"
done
if [ -z "$PY" ]; then
  echo "gpu-check: no Python with onnxruntime found (tried: ${candidates[*]}); run scripts/setup.sh --no-build" >&2
  exit 2
fi
if [ -n "${CUDA_LIBS:-}" ]; then
  export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# The library the service loads: that onnxruntime's own (onnxruntime-gpu's for CUDA).
ORT_DYLIB_PATH="$("$PY" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.*")))[-1])' 2>/dev/null || true)"
export ORT_DYLIB_PATH
if [ "$MODE" = cuda ]; then
  echo "gpu-check: CUDA mode: $PY, ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
else
  echo "gpu-check: CPU MODE: no onnxruntime with a usable CUDAExecutionProvider (tried: ${candidates[*]}); using $PY."
  echo "gpu-check: every figure below is a CPU figure; the CUDA ones are still to be measured on a GPU."
fi
# 5 minutes at most in all: the parts have budgets (about 20 s parity, 60 s sweep, 120 s load
# test, plus start-up and ingest); the timeout is the hard stop.
timeout -k 10 285 "$PY" scripts/gpu_check.py --out "$OUT" --ort-dylib "$ORT_DYLIB_PATH" "$@"
rc=$?
[ "$rc" = 124 ] && echo "gpu-check: stopped at the 285 s limit; $OUT/gpu-check.json has the parts that finished"
echo "gpu-check: rc $rc, $(date -Is), load average $(cut -d' ' -f1-3 /proc/loadavg); files in $OUT"
exit "$rc"
