#!/usr/bin/env bash
# Record a full training run under results/NAME exactly as produced:
#   scripts/record-run.sh [--allow-dirty] NAME RUN_DIR -- lstmkit train ... --save-path RUN_DIR
# Writes command.txt, machine.txt, train.log (stdout+stderr), wall_time.txt, and copies the
# run's metrics.jsonl and curve.png (checkpoints stay in RUN_DIR: too big for the repo).
#
# A long run spans segments: a command with --resume continues the record of NAME, appending
# its command, machine, log and wall time as "segment N" (each segment names its machine).
# Stop a segment with Ctrl-C (SIGINT), SIGTERM or SIGHUP, to this script or its process group:
# the run checkpoints the window it is in (lstmkit.stopping), and the segment's wall time and
# the log's last lines are still written. A segment killed outright (SIGKILL) writes none; the
# next segment records its span up to the run's last metrics line. The run has a process group
# of its own: a SIGKILL to this script's group leaves it training, so kill the run's too.
#
# A record names the commit it ran from, so the tree must be that commit: a tree with changes
# (tracked or untracked) is refused. --allow-dirty records it anyway, with the changes beside
# the record in uncommitted.diff and machine.txt saying the tree was dirty.
# PYTHON (default python3) is the interpreter whose torch the run uses.
set -euo pipefail
allow_dirty=0
if [[ ${1:-} == --allow-dirty ]]; then allow_dirty=1; shift; fi
if [[ $# -lt 3 ]]; then
    echo "usage: $0 [--allow-dirty] NAME RUN_DIR -- COMMAND..." >&2
    exit 2
fi
name=$1 run_dir=$2; shift 2
[[ $1 == -- ]] && shift
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/results/$name"
python=${PYTHON:-python3}

# Tracked changes and untracked files that git does not ignore, outside results/: records
# made earlier (not yet committed) are outputs, not code the run depends on.
in_git=0
git -C "$root" rev-parse --git-dir > /dev/null 2>&1 && in_git=1
changes=""
if [[ $in_git == 1 ]]; then
    changes=$(git -C "$root" status --porcelain -- . ':(exclude)results')
fi
if [[ -n $changes && $allow_dirty == 0 ]]; then
    echo "record-run: the tree has uncommitted changes; commit them, or pass --allow-dirty" \
         "to store them beside the record:" >&2
    echo "$changes" >&2
    exit 2
fi

# Instruction sets that decide which kernels (and how fast) torch runs on this CPU.
instruction_sets() {
    local flags found=()
    flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    local -A names=([avx2]=AVX2 [avx512f]=AVX-512 [avx512_bf16]=AVX512-BF16
                    [amx_tile]=AMX [amx_bf16]=AMX-BF16 [amx_int8]=AMX-INT8)
    for flag in avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8; do
        [[ $flags == *" $flag "* ]] && found+=("${names[$flag]}")
    done
    echo "${found[*]:-none of AVX2, AVX-512, AVX512-BF16, AMX}"
}

# The CPU's name with its family and model: "AMD EPYC" alone names Zen 3, 4 and 5 alike.
cpu_name() {
    local name family model
    name=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
    family=$(sed -n 's/^cpu family[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -1)
    model=$(sed -n 's/^model[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -1)
    echo "$name (family ${family:-?}, model ${model:-?})"
}

# Physical cores (distinct socket/core pairs) and hardware threads (logical CPUs).
cores_and_threads() {
    local cores threads
    threads=$(nproc --all)
    cores=$(lscpu -p=SOCKET,CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
    echo "${cores:-?} cores, $threads threads"
}

# L2 and L3 sizes: whether a layer's weights fit in the cache sets much of the large model's speed.
caches() {
    local found
    found=$(lscpu 2>/dev/null | sed -n 's/^\(L[23]\) cache: *\(.*\)/\1 \2/p' | paste -sd ';')
    echo "${found//;/; }"
}

commit_line() {
    local commit
    if [[ $in_git == 0 ]]; then
        echo "lstmkit commit: none (not a git checkout)"
        return
    fi
    commit=$(git -C "$root" rev-parse --short HEAD)
    if [[ -z $changes ]]; then
        echo "lstmkit commit: $commit (clean tree)"
    else
        echo "lstmkit commit: $commit (dirty tree: uncommitted changes in uncommitted.diff)"
    fi
}

# git diff against HEAD, then every untracked file as a diff from nothing.
write_uncommitted_diff() {
    git -C "$root" diff HEAD -- . ':(exclude)results'
    git -C "$root" ls-files --others --exclude-standard -z -- . ':(exclude)results' |
        while IFS= read -r -d '' file; do
            git -C "$root" diff --no-index -- /dev/null "$file" || true
        done
}

segment=1 append=""
if [[ " $* " == *" --resume "* && -f $out/machine.txt ]]; then
    segment=$(( $(grep -c '^segment ' "$out/machine.txt" || true) + 1 ))
    if (( segment == 1 )); then segment=2; fi  # a record made before segments is segment 1
    append=1
elif [[ -e $out ]]; then
    echo "record-run: results/$name exists; a fresh run does not replace a record" >&2
    exit 2
fi
# A segment killed outright (SIGKILL, a machine taken away) wrote no wall time. The next one
# says so, with the span from that segment's start to the run's last metrics write (nothing has
# written them since), so the record accounts for every segment.
note_killed_segments() {
    local written n started end
    written=$(grep -c . "$out/wall_time.txt" 2>/dev/null || true)
    for (( n = ${written:-0} + 1; n < segment; n++ )); do
        started=$(awk -v s="segment $n" '$0 == s {getline; sub(/^date: /, ""); print; exit}' \
                  "$out/machine.txt")
        end=""
        if (( n == segment - 1 )) && [[ -n $started && -f $run_dir/metrics.jsonl ]]; then
            end=$(stat -c %Y "$run_dir/metrics.jsonl")
        fi
        "$python" - "$n" "$started" "$end" >> "$out/wall_time.txt" <<'PY'
import sys
from datetime import datetime, timezone
n, started, end = sys.argv[1:]
note = "it was killed before it could record one, so it has no exit status"
begin = last = None
if started and end:  # metrics older than the segment's start: it wrote none
    begin = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    last = datetime.fromtimestamp(int(end), timezone.utc)
if begin and last >= begin:
    s = (last - begin).total_seconds()
    print(f"segment {n}: wall time: about {s:.0f} s ({s / 60:.1f} min), from its start to the "
          f"run's last metrics line ({last:%Y-%m-%dT%H:%M:%SZ}); {note}")
else:
    print(f"segment {n}: wall time unknown; {note}")
PY
    done
}
if [[ -n $append ]]; then note_killed_segments; fi
mkdir -p "$out"
redirect() { if [[ -n $append ]]; then cat >> "$1"; else cat > "$1"; fi; }
{ echo "segment $segment: $(printf '%q ' "$@")"; } | redirect "$out/command.txt"
{
    echo "segment $segment"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(cpu_name)"
    echo "instruction sets: $(instruction_sets)"
    echo "cores: $(cores_and_threads)"
    echo "caches: $(caches)"
    echo "OMP_NUM_THREADS: ${OMP_NUM_THREADS:-unset}"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    "$python" -c 'import platform, torch; print(f"python: {platform.python_version()}"); print(f"torch: {torch.__version__}, threads: {torch.get_num_threads()}")'
    commit_line
} | redirect "$out/machine.txt"
if [[ -n $changes ]]; then
    (cd "$root" && write_uncommitted_diff) > "$out/uncommitted.diff"
fi
start=$(date +%s.%N)
finish() {
    local status=$1 end
    end=$(date +%s.%N)
    "$python" -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'segment {sys.argv[4]}: wall time: {s:.0f} s ({s/60:.1f} min), exit status {sys.argv[3]}')" "$start" "$end" "$status" "$segment" | redirect "$out/wall_time.txt"
    for f in metrics.jsonl curve.png; do
        if [[ -f $run_dir/$f ]]; then cp "$run_dir/$f" "$out/"; fi
    done
}
# Ctrl-C, SIGTERM or a hang-up stops the run with one SIGTERM: it ends its window and
# checkpoints there (a second signal stops it at once, keeping the last checkpoint: written
# atomically); the segment is still recorded. The run and its log's tee get a process group of
# their own, so that a signal to this script's whole group (a terminal's Ctrl-C, `timeout`, a
# job scheduler) reaches the run only through this relay, not twice; tee ignores signals and
# drains until the run exits, so the log keeps the run's last lines (and, in a background group,
# still writes to a terminal set to `stty tostop`).
trap 'set +e; kill -TERM "$pid" 2>/dev/null; wait "$pid"; s=$?; finish "$s"; exit "$s"' INT TERM HUP
tee_flags=()
if [[ -n $append ]]; then tee_flags=(-a); fi
set -m
"$@" > >(trap '' INT TERM HUP TTOU; exec tee "${tee_flags[@]}" "$out/train.log") 2>&1 &
pid=$!
set +m
set +e
wait "$pid"
status=$?
set -e
trap - INT TERM
finish "$status"
exit "$status"
