"""Data-parallel training speed on one machine: 2 processes x 1 thread (torchrun + DDP, gloo)
against 1 process x 2 threads, both running the real `lstmkit train`.

Each measurement launches the command with `--max-max-epoch 1`, reads the progress records of
its metrics.jsonl (rank 0's: words of the whole batch per second, ten an epoch) and stops it
after `--reports` of them. The speed is taken between the first and the last report, so start-up
and warm-up before the first report do not count. Launches alternate (A B A B ...) so a noisy
machine slows both alike; the medians and their ratio are printed as one JSON line.

    python bench/ddp.py --data-dir ../shared/data/ptb                  # `small` on PTB, ~7 min
    python bench/ddp.py --reports 3 --repeats 1 -- --hidden-size 16    # smoke test

Without --data-dir, a generated corpus with PTB's vocabulary size (10,000 words) is used.
Arguments after `--` go to `lstmkit train` in both launches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import machine  # bench/ is on sys.path when run as a script

WAYS = {  # name -> (processes, threads per process)
    "2 processes x 1 thread (torchrun, DDP, gloo)": (2, 1),
    "1 process x 2 threads": (1, 2),
}


def launch_command(processes: int, train_args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "lstmkit", "train", *train_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), "-m", "lstmkit", "train", *train_args]


def progress_records(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    lines = metrics.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.endswith("}")]
    return [r for r in records if r.get("event") == "progress" and r.get("epoch") == 1]


def words_per_sec(records: list[dict]) -> float:
    """Speed between the first and the last report.

    A report holds the step reached and the speed since the epoch began, so the time it was
    made at is step x (batch x num_steps) / speed; batch x num_steps cancels in the ratio.
    """
    first, last = records[0], records[-1]
    seconds_per_word = (last["step"] / last["words_per_sec"]
                        - first["step"] / first["words_per_sec"])
    return (last["step"] - first["step"]) / seconds_per_word


def measure(processes: int, threads: int, train_args: list[str], reports: int,
            work_dir: Path, timeout: float) -> float:
    run = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    command = launch_command(processes, [*train_args, "--save-path", str(run)])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CI": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while len(progress_records(run / "metrics.jsonl")) < reports:
            if child.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        _stop(child)
    records = progress_records(run / "metrics.jsonl")
    if len(records) < 2:
        errors = [line for line in child.stderr.read().splitlines() if "error" in line.lower()]
        raise SystemExit(f"{' '.join(command)}: fewer than 2 progress reports (exit "
                         f"{child.returncode}):\n" + "\n".join(errors[:10]))
    return words_per_sec(records[:reports])


def _stop(child: subprocess.Popen) -> None:
    """End the launched command and everything it started (its own session)."""
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def generated_ptb(directory: Path, tokens: int = 200_000, vocab: int = 10_000) -> Path:
    """PTB's layout and vocabulary size (with <unk> and <eos>), Zipf-like word frequencies,
    20 words a line; every word occurs in train."""
    rng = random.Random(0)
    words = ["<unk>", *(f"w{i}" for i in range(vocab - 3))]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", tokens), ("valid", tokens // 10), ("test", tokens // 10)):
        drawn = rng.choices(words, weights, k=count)
        lines = [" ".join(drawn[i:i + 20]) for i in range(0, count, 20)]
        if split == "train":
            lines.insert(0, " ".join(words))
        (directory / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--data-dir", default=os.environ.get("LSTMKIT_DATA"),
                   help="PTB directory (default: $LSTMKIT_DATA, else a generated corpus)")
    p.add_argument("--reports", type=int, default=4,
                   help="progress reports (tenths of an epoch) per measurement, >= 2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    args = p.parse_args(argv)
    if args.reports < 2:
        p.error("--reports must be at least 2")
    with tempfile.TemporaryDirectory(prefix="lstmkit-bench-ddp-") as tmp:
        work = Path(tmp)
        data_dir = Path(args.data_dir) if args.data_dir else generated_ptb(work / "ptb")
        train_args = ["--preset", args.preset, "--data-dir", str(data_dir),
                      "--max-max-epoch", "1", *extra]
        speeds: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(args.repeats):
            for name, (processes, threads) in WAYS.items():
                speeds[name].append(measure(processes, threads, train_args, args.reports,
                                            work, args.timeout))
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    ddp, alone = (medians[name] for name in WAYS)
    print(json.dumps({
        "preset": args.preset, "extra_args": extra,
        "data": str(args.data_dir) if args.data_dir else "generated (10,000 words)",
        "train_words_per_sec": {name: round(v) for name, v in medians.items()},
        "ratio_ddp_to_threads": round(ddp / alone, 3),
        "all_runs": {name: [round(v) for v in values] for name, values in speeds.items()},
        "reports_per_run": args.reports, "repeats": args.repeats,
        "machine": {k: v for k, v in machine().items() if k != "threads"},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
