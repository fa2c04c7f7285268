#!/usr/bin/env bash
# Record a full training run under results/NAME exactly as produced:
#   scripts/record-run.sh NAME RUN_DIR -- lstmkit train ... --save-path RUN_DIR
# Writes command.txt, machine.txt, train.log (stdout+stderr), wall_time.txt, and copies the
# run's metrics.jsonl and curve.png (checkpoints stay in RUN_DIR: too big for the repo).
set -euo pipefail
name=$1 run_dir=$2; shift 2
[[ $1 == -- ]] && shift
out="$(cd "$(dirname "$0")/.." && pwd)/results/$name"
mkdir -p "$out"
printf '%q ' "$@" > "$out/command.txt"; echo >> "$out/command.txt"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc --all) cores"
    echo "OMP_NUM_THREADS: ${OMP_NUM_THREADS:-unset}"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    python3 -c 'import platform, torch; print(f"python: {platform.python_version()}"); print(f"torch: {torch.__version__}, threads: {torch.get_num_threads()}")'
    echo "lstmkit commit: $(git -C "$out" rev-parse --short HEAD 2>/dev/null || echo none)"
} > "$out/machine.txt"
start=$(date +%s.%N)
set +e
"$@" 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'wall time: {s:.0f} s ({s/60:.1f} min), exit status {sys.argv[3]}')" "$start" "$end" "$status" > "$out/wall_time.txt"
for f in metrics.jsonl curve.png; do [[ -f $run_dir/$f ]] && cp "$run_dir/$f" "$out/"; done
exit "$status"
