#!/usr/bin/env bash
# The GPU machine's check of issue 14 (resources, hardware record, framework=distributed), with the REAL nvidia-smi.
# Self-contained: makes its own temp project; needs no docker, no package index. Prints PASS/FAIL lines and a
# summary; exits non-zero if any check failed. Meant to finish in under 4 minutes.
#
#   PYTHON=python3.12 MLTRAIN=/path/to/venv/bin/mltrain bash benchmarks/device_gpu.sh
#
# PYTHON: the interpreter with torch + CUDA (the jobs run on it: environment=user_managed);
# MLTRAIN: the mltrain command (installed from the carried wheelhouse). The benchmark runs on MLTRAIN's Python.
set -u
PYTHON=${PYTHON:-python3}
MLTRAIN=${MLTRAIN:-mltrain}
HERE=$(cd "$(dirname "$0")" && pwd)
T=${TIMEOUT:-120}
fails=0
passes=0
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
info() { echo "INFO $*"; }

WORK=$(mktemp -d /tmp/mltrain-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PROJ=$WORK/proj
mkdir -p "$PROJ"
cd "$PROJ" || exit 2
export MLTRAIN_CACHE_DIR=$WORK/cache
unset MLTRAIN_HOME MLTRAIN_CONFIG_DIR
ENV=(environment=user_managed "environment.interpreter=$(command -v "$PYTHON")")

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), python $("$PYTHON" -V 2>&1)"
echo "== mltrain: $MLTRAIN ($("$MLTRAIN" --version 2>&1 | head -1))"
if ! command -v nvidia-smi >/dev/null; then
    fail "nvidia-smi is not on PATH: this is not the GPU machine"
    exit 1
fi
nvidia-smi -L
GPUS=$(nvidia-smi -L | grep -c '^GPU ')
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)
info "nvidia-smi: $GPUS GPU(s), $NAME, driver $DRIVER, CUDA $CUDA"

last_run() { "$MLTRAIN" runs list --json --limit 1 | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }
show() { "$MLTRAIN" runs show "$1" --json; }

# ---- 1. resources.gpus=1: CUDA_VISIBLE_DEVICES, and the job sees exactly one device
cat > see.py <<'EOF'
import os, torch
print("CVD", os.environ.get("CUDA_VISIBLE_DEVICES"), "count", torch.cuda.device_count(), flush=True)
EOF
out=$(timeout "$T" "$MLTRAIN" script=see.py resources.gpus=1 "${ENV[@]}" 2>&1)
if grep -q "CVD 0 count 1" <<<"$out"; then pass "resources.gpus=1 -> CUDA_VISIBLE_DEVICES=0, torch sees 1 device"
else fail "resources.gpus=1: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi
out=$(timeout "$T" "$MLTRAIN" plan script=see.py resources.gpus=1 "${ENV[@]}" 2>&1)
if grep -q "CUDA_VISIBLE_DEVICES=0" <<<"$out"; then pass "plan shows the mapping"; else fail "plan: $out"; fi

# ---- 2. the hardware record has the real GPU
run=$(last_run)
hw=$(show "$run" | "$PYTHON" -c 'import json,sys; h=json.load(sys.stdin)["hardware"] or {}; g=(h.get("gpus") or [{}])[0]; print(g.get("name"), "|", h.get("driver"), "|", h.get("cuda"), "|", h.get("gpu_count"))')
info "hardware record: $hw"
if [ "$hw" = "$NAME | $DRIVER | $CUDA | 1" ]; then pass "hardware record: $NAME, driver $DRIVER, CUDA $CUDA"
else fail "hardware record '$hw' != '$NAME | $DRIVER | $CUDA | 1'"; fi
"$MLTRAIN" runs show "$run" | grep -E '^(gpus|host) '

# ---- 3. more GPUs than the machine has: one line, nothing started
out=$(timeout "$T" "$MLTRAIN" script=see.py "resources.gpus=$((GPUS + 1))" "${ENV[@]}" 2>&1); rc=$?
if [ $rc -ne 0 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -q "has $GPUS GPU" <<<"$out"; then pass "gpus=$((GPUS + 1)) refused: $out"
else fail "gpus=$((GPUS + 1)) (rc $rc): $out"; fi

# ---- 4. a real CUDA job
cat > cuda_job.py <<'EOF'
import torch
a = torch.randn(2048, 2048, device="cuda")
b = (a @ a.T).sum().item()
torch.cuda.synchronize()
print("cuda ok", torch.cuda.get_device_name(0), round(b) != 0, flush=True)
EOF
out=$(timeout "$T" "$MLTRAIN" script=cuda_job.py resources.gpus=1 "${ENV[@]}" 2>&1)
if grep -q "cuda ok" <<<"$out"; then pass "CUDA job: $(grep 'cuda ok' <<<"$out")"; else fail "CUDA job: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi

# ---- 5. framework=distributed: gloo all-reduce over 4 ranks (mltrain's launcher, then torchrun); nccl on the GPU
cat > allreduce.py <<'EOF'
import os, sys, torch, torch.distributed as dist
backend = sys.argv[1]
dist.init_process_group(backend, init_method="env://")
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(1, torch.cuda.device_count())) if backend == "nccl" else torch.device("cpu")
value = torch.tensor([float(dist.get_rank() + 1)], device=device)
dist.all_reduce(value)
print("allreduce", backend, int(value.item()), "world", dist.get_world_size(), flush=True)
dist.destroy_process_group()
EOF
for launcher in mltrain torchrun; do
    out=$(timeout "$T" "$MLTRAIN" script=allreduce.py args=[gloo] framework=distributed framework.nproc_per_node=4 \
          "framework.launcher=$launcher" "${ENV[@]}" 2>&1)
    n=$(grep -c "allreduce gloo 10 world 4" <<<"$out")
    if [ "$n" -eq 4 ]; then pass "distributed gloo all-reduce, 4 ranks, launcher=$launcher"
    else fail "distributed gloo launcher=$launcher ($n of 4 ranks): $(tail -4 <<<"$out" | tr '\n' ' ')"; fi
done
run=$(last_run)
ranks=$(ls "$PROJ/.mltrain/runs/$run/outputs/ranks" 2>/dev/null | tr '\n' ' ')
info "torchrun's run kept: ${ranks:-no rank files (torchrun writes its own logs)}"
out=$(timeout "$T" "$MLTRAIN" script=allreduce.py args=[nccl] framework=distributed framework.nproc_per_node=1 \
      resources.gpus=1 "${ENV[@]}" 2>&1)
if grep -q "allreduce nccl 1 world 1" <<<"$out"; then pass "distributed nccl all-reduce on the GPU (1 rank)"
else fail "nccl: $(tail -4 <<<"$out" | tr '\n' ' ')"; fi
ls "$PROJ/.mltrain/runs/$(last_run)/outputs/ranks" >/dev/null 2>&1 && pass "rank log files kept (outputs/ranks)" \
    || fail "no outputs/ranks for the mltrain launcher's run"

# ---- 6. the distributed benchmark vs torchrun (4 ranks; on MLTRAIN's Python, the ranks on PYTHON)
BENCH_PY=$(head -1 "$(command -v "$MLTRAIN")" | sed 's/^#! *//')
[ -x "$BENCH_PY" ] || BENCH_PY=$PYTHON
echo "== bench_distributed (bench on $BENCH_PY, ranks on $PYTHON)"
if PYTHON=$(command -v "$PYTHON") MLTRAIN=$(command -v "$MLTRAIN") BENCH_REPEAT=5 timeout 150 "$BENCH_PY" "$HERE/bench_distributed.py"; then
    pass "bench_distributed ran"
else fail "bench_distributed did not finish"; fi

echo "== $passes passed, $fails failed"
[ "$fails" -eq 0 ]
