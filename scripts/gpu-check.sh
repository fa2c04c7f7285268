#!/usr/bin/env bash
# The CUDA paths, once, on a machine with an NVIDIA GPU:
#   [DATA=PTB_DIR] bash scripts/gpu-check.sh OUT_DIR
# 1. machine.txt: the GPU, driver, torch, CUDA and cuDNN;
# 2. tests.log: the default test suite with a GPU present (tests/test_cuda.py runs instead of
#    skipping, and `--device auto` picks cuda);
# 3. cli.log: the command line on the `test` preset on PTB: train, evaluate, sample and score on
#    cuda in fp32, bf16 and fp16;
# 4. small.log: one epoch of `small` on PTB in fp32 and in bf16, each line with its words/s.
# DATA defaults to ../shared/data/ptb beside the repository; without PTB, steps 3 and 4 are
# skipped. It runs from the source tree (PYTHONPATH=src) with the python3 that holds torch, and
# goes on past a failing step: summary.txt gives each step's exit status.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out=${1:?usage: scripts/gpu-check.sh OUT_DIR}
data=${DATA:-$root/../shared/data/ptb}
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out"/{machine.txt,tests.log,cli.log,small.log,summary.txt}  # a rerun starts afresh
runs=$(mktemp -d)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"
lstmkit() { python3 -m lstmkit "$@"; }

step() {  # step NAME LOG COMMAND...: runs it, appending to LOG; notes its status
    local name=$1 log=$2; shift 2
    echo "== $name: $*" >> "$out/$log"
    "$@" >> "$out/$log" 2>&1
    local status=$?
    echo "$name: exit $status" | tee -a "$out/summary.txt"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "|", torch.cuda.get_device_name())'
    echo "lstmkit commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)" \
         "($(git status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean) tree)"
} > "$out/machine.txt" 2>&1

step "tests" tests.log python3 -m pytest -q -p no:cacheprovider

if [[ -f $data/ptb.train.txt ]]; then
    for precision in fp32 bf16 fp16; do
        run="$runs/test-$precision"
        step "train test $precision" cli.log lstmkit train --preset test --device cuda \
            --precision "$precision" --data-dir "$data" --save-path "$run"
        step "evaluate $precision" cli.log lstmkit evaluate --model "$run" --data-dir "$data" \
            --device cuda --precision "$precision"
        step "evaluate stream $precision" cli.log lstmkit evaluate --model "$run" \
            --data-dir "$data" --device cuda --precision "$precision" --stream
        step "sample $precision" cli.log lstmkit sample --model "$run" --device cuda \
            --prime "the company" --length 30 --seed 1
        step "score $precision" cli.log lstmkit score --model "$run" --device cuda \
            "$data/ptb.valid.txt"
    done
    for precision in fp32 bf16; do
        step "small 1 epoch $precision" small.log lstmkit train --preset small --device cuda \
            --precision "$precision" --max-max-epoch 1 --data-dir "$data" \
            --save-path "$runs/small-$precision"
    done
else
    echo "no PTB in $data: the command line and small steps skipped" | tee -a "$out/summary.txt"
fi
rm -rf "$runs"
