#!/usr/bin/env bash
# The first tenths of epoch 1 of `large` for each seed given, one after another:
#   [TENTHS=3] bash results/ptb-large-seed0/probes-zen4/probe_seeds.sh SEED...
# Each run is stopped with SIGTERM once its progress line at TENTHS tenths is out (it
# checkpoints and exits); its output is kept as bf16-sN.txt (bf16-sN-TENTHS.txt where TENTHS is
# not 3) and its metrics log as bf16-sN.jsonl (-TENTHS.jsonl) beside this script, and its run
# directory (in /tmp) is removed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${LSTMKIT_DATA:-../shared/data/ptb}"
tenths="${TENTHS:-3}"
suffix=""
[[ $tenths == 3 ]] || suffix="-$tenths"
for seed in "$@"; do
    run="/tmp/lstmkit-large-probe-s$seed" out="$here/bf16-s$seed$suffix.txt"
    rm -rf "$run"
    lstmkit train --preset large --seed "$seed" --data-dir "$data" --save-path "$run" \
        > "$out" 2>&1 &
    pid=$!
    until grep -q "^0\.${tenths}0[0-9] perplexity" "$out"; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 2
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    cp "$run/metrics.jsonl" "$here/bf16-s$seed$suffix.jsonl"
    rm -rf "$run"
done
