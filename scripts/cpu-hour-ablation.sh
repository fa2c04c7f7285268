#!/usr/bin/env bash
# The cpu-hour preset's ablation: the same budget with one piece turned off in turn, each run
# recorded under results/ptb-cpu-hour/ablation/NAME by scripts/record-run.sh, its run directory
# under RUNS (default ~/lstmkit-runs/cpu-hour-ablation). Recorded runs are skipped and an
# interrupted one is resumed, so the ablation can be continued after any interruption:
#   [DATA=DIR] [RUNS=DIR] bash scripts/cpu-hour-ablation.sh [NAME...]
# (DATA defaults to PTB in ../shared/data/ptb beside the repository; no NAME: all of them),
# then `python3 scripts/ablation_table.py` writes results/ptb-cpu-hour/ablation.md.
# One run at a time, with nothing else on the CPU: the budget is wall time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data=${DATA:-$root/../shared/data/ptb}
runs=${RUNS:-$HOME/lstmkit-runs/cpu-hour-ablation}

declare -A off=(
    [no-tied-weights]="--tie-weights false"
    [no-locked-dropout]="--locked-dropout-input 0 --locked-dropout-hidden 0 --locked-dropout-output 0"
    [no-embedding-dropout]="--embedding-dropout 0"
    [no-weight-drop]="--weight-drop 0"
    [no-ar-tar]="--ar 0 --tar 0"
    [no-weight-decay]="--weight-decay 0"
    [no-variable-bptt]="--variable-bptt false"
    [no-cosine-schedule]="--lr-schedule epochs --max-epoch 6 --lr-decay 0.8"
)
names=("$@")
if (( ${#names[@]} == 0 )); then
    names=(no-tied-weights no-locked-dropout no-embedding-dropout no-weight-drop no-ar-tar
           no-weight-decay no-variable-bptt no-cosine-schedule)
fi
for name in "${names[@]}"; do
    [[ -n ${off[$name]+x} ]] || { echo "unknown ablation $name" >&2; exit 2; }
    record="$root/results/ptb-cpu-hour/ablation/$name"
    if grep -qs "exit status 0" "$record/wall_time.txt"; then
        echo "$name: recorded"
        continue
    fi
    if [[ -f $runs/$name/model.safetensors && -f $record/machine.txt ]]; then
        cmd=(lstmkit train --resume --save-path "$runs/$name" --data-dir "$data")
    else
        rm -rf "$record" "$runs/$name"
        mkdir -p "$runs"
        # shellcheck disable=SC2206  # the flags are words
        cmd=(lstmkit train --preset cpu-hour ${off[$name]} --data-dir "$data"
             --save-path "$runs/$name")
    fi
    echo "$name: ${cmd[*]}"
    bash "$root/scripts/record-run.sh" "ptb-cpu-hour/ablation/$name" "$runs/$name" -- "${cmd[@]}"
done
