#!/usr/bin/env bash
# One command that checks a GPU machine (issue 9 §6): builds the CUDA library (with cuDNN when it is there),
# runs the GPU tests, then benchmarks the GPU build beside the CPU build on the same machine and writes the
# figures to a JSON file. Bounded to finish in under 8 minutes on one H100/H200: every measurement stops after
# a few seconds (at least one timed iteration after a warm-up).
#
#   scripts/gpu_check.sh [--out build/gpu_check.json] [--all-archs] [--skip-tests] [--seconds 3]
#
# The build targets this machine's GPU only (its compute capability from nvidia-smi), which takes a minute
# instead of several; --all-archs builds the default arch list. Needs nvcc (CUDA_HOME or /usr/local/cuda) and
# the CUDA wheels (pip install ".[cuda]") or a toolkit with cuBLAS.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/gpu_check.json
ALL_ARCHS=0
SKIP_TESTS=0
SECONDS_PER=3
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --all-archs) ALL_ARCHS=1; shift ;;
        --skip-tests) SKIP_TESTS=1; shift ;;
        --seconds) SECONDS_PER=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
GPU_LIB=$PWD/build/gpu/libdarknet.so
CPU_LIB=$PWD/build/cpu/libdarknet.so
START=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }

if ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check.sh: nvidia-smi not found: this machine has no NVIDIA driver" >&2
    exit 1
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader

# ---- build ----
MAKE_ARGS=(GPU=1 "PYTHON=$PYTHON" LIBRARY=build/gpu/libdarknet.so)
if [ "$ALL_ARCHS" = 0 ]; then
    CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    MAKE_ARGS+=("CUDA_ARCH=sm_$CAP")
fi
HAVE_CUDNN=$($PYTHON - <<'EOF'
import glob, os
try:
    import nvidia
    wheel = any(glob.glob(os.path.join(p, "cudnn", "lib", "libcudnn.so.9")) for p in nvidia.__path__)
except ImportError:
    wheel = False
home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
print(1 if wheel or os.path.exists(os.path.join(home, "include", "cudnn.h")) else 0)
EOF
)
MAKE_ARGS+=("CUDNN=$HAVE_CUDNN")
# NCCL (the multi-GPU transport) when its wheel or NCCL_HOME is there, so its gpu test runs too.
if [ -n "${NCCL_HOME:-}" ] || $PYTHON -c "import nvidia.nccl" 2>/dev/null; then MAKE_ARGS+=("NCCL=1"); fi
stamp "building ${MAKE_ARGS[*]}"
make -s "${MAKE_ARGS[@]}" lib
stamp "building the CPU library for comparison"
make -s "PYTHON=$PYTHON" LIBRARY=build/cpu/libdarknet.so lib
PYDARKNET_LIBRARY=$GPU_LIB $PYTHON -c "import pydarknet as p; print('build:', p.build_info()); print('devices:', p.cuda_device_count())"

# ---- tests ----
TEST_STATUS=skipped
if [ "$SKIP_TESTS" = 0 ]; then
    stamp "GPU tests"
    if PYDARKNET_LIBRARY=$GPU_LIB PYTHONPATH=$PWD timeout 300 $PYTHON -m pytest -q -p no:cacheprovider -m gpu \
        tests; then
        TEST_STATUS=passed
    else
        TEST_STATUS=failed
    fi
fi

# ---- benchmarks: each figure measured in a process of its own library ----
bench() {  # bench LIBRARY DEVICE -> one JSON line
    PYDARKNET_LIBRARY=$1 BENCH_DEVICE=$2 BENCH_SECONDS=$SECONDS_PER PYTHONPATH=$PWD timeout 240 $PYTHON - <<'EOF'
import json, os, subprocess, time
import numpy as np
from pydarknet import Network

device, budget = os.environ["BENCH_DEVICE"], float(os.environ["BENCH_SECONDS"])
rng = np.random.default_rng(0)


def timed(step, images_per_step, warm_up=True):
    """Images per second of step(): a warm-up call (cuDNN plans, first allocations, Winograd caches), then calls
    until `budget` seconds have passed (at least one)."""
    if warm_up:
        step()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return n * images_per_step / elapsed


def gpu_memory_mib():
    if device == "cpu":
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    used = [int(m) for pid, m in (line.split(",") for line in out.strip().splitlines() if "," in line)
            if int(pid) == os.getpid()]
    return used[0] if used else None


def network(cfg, batch):
    net = Network(cfg, batch=batch, device=device)
    net.resize(416, 416)
    return net


def truths(batch):
    t = np.zeros((batch, 4, 5), np.float32)
    t[:, :, :2] = rng.uniform(0.2, 0.8, (batch, 4, 2))
    t[:, :, 2:4] = rng.uniform(0.05, 0.4, (batch, 4, 2))
    t[:, :, 4] = rng.integers(0, 80, (batch, 4))
    return t


figures = {"device": device}
for batch in (1, 16):
    net = network("cfg/yolov3.cfg", batch)
    x = rng.uniform(0, 1, (batch, 3, 416, 416)).astype(np.float32)
    rate = timed(lambda: net.forward(x), batch)
    figures[f"yolov3_416_inference_b{batch}_ms_per_image"] = 1000.0 / rate
    figures[f"yolov3_416_inference_b{batch}_gpu_mib"] = gpu_memory_mib()
    net.close()
for name, cfg, batch in (("yolov3_416", "cfg/yolov3.cfg", 16), ("yolov3_tiny_416", "cfg/yolov3-tiny.cfg", 64)):
    net = network(cfg, batch)
    x = rng.uniform(0, 1, (batch, 3, 416, 416)).astype(np.float32)
    t = truths(batch)

    def step():
        net.train_chunk(x, t)
        net.update(0.0001, 0.9, 0.0005, batch)

    # a CPU training step takes seconds and needs no warm-up: it would only double the time spent
    figures[f"{name}_train_b{batch}_images_per_s"] = timed(step, batch, warm_up=device != "cpu")
    figures[f"{name}_train_b{batch}_gpu_mib"] = gpu_memory_mib()
    net.close()
print(json.dumps(figures))
EOF
}
stamp "benchmark on cuda:0"
GPU_FIGURES=$(bench "$GPU_LIB" cuda:0 | tail -1)
stamp "benchmark on the CPU"
CPU_FIGURES=$(bench "$CPU_LIB" cpu | tail -1)

mkdir -p "$(dirname "$OUT")"
GPU_FIGURES=$GPU_FIGURES CPU_FIGURES=$CPU_FIGURES TEST_STATUS=$TEST_STATUS OUT=$OUT PYDARKNET_LIBRARY=$GPU_LIB \
    PYTHONPATH=$PWD $PYTHON - <<'EOF'
import json, os, platform, subprocess
import pydarknet

gpu, cpu = json.loads(os.environ["GPU_FIGURES"]), json.loads(os.environ["CPU_FIGURES"])
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
report = {"gpu": smi, "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
          "build": pydarknet.build_info(), "gpu_tests": os.environ["TEST_STATUS"], "cuda": gpu, "cpu_build": cpu}
rows = [("yolov3-416 inference, batch 1 (ms/image)", "yolov3_416_inference_b1_ms_per_image"),
        ("yolov3-416 inference, batch 16 (ms/image)", "yolov3_416_inference_b16_ms_per_image"),
        ("yolov3-416 training, batch 16 (images/s)", "yolov3_416_train_b16_images_per_s"),
        ("yolov3-tiny-416 training, batch 64 (images/s)", "yolov3_tiny_416_train_b64_images_per_s")]
print(f"\nGPU: {smi}   CPU: {report['cpu']} x{report['cpu_cores']}   GPU tests: {report['gpu_tests']}")
print(f"{'':48s} {'cuda:0':>10s} {'cpu':>10s} {'GPU MiB':>9s}")
for label, key in rows:
    mem_key = key.rsplit("_", 3)[0] + "_gpu_mib" if "inference" in key else key.replace("_images_per_s", "_gpu_mib")
    mem = gpu.get(mem_key)
    print(f"{label:48s} {gpu[key]:10.2f} {cpu[key]:10.2f} {mem if mem is not None else '?':>9}")
with open(os.environ["OUT"], "w") as f:
    json.dump(report, f, indent=1)
print(f"figures written to {os.environ['OUT']}")
EOF
stamp "done"
[ "$TEST_STATUS" != failed ]
