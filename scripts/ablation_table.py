"""The cpu-hour ablation table from the recorded runs' metrics (results/ptb-cpu-hour).

    python3 scripts/ablation_table.py [RESULTS_DIR]

Reads RESULTS_DIR/metrics.jsonl (the whole preset) and RESULTS_DIR/ablation/*/metrics.jsonl
(one piece off each), writes RESULTS_DIR/ablation.md and prints it. A run without a test
record yet is listed as unfinished."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(run: Path) -> dict | None:
    """Last and best valid perplexity, test perplexity and epochs of a recorded run (the
    test is of the final weights, as the run reports it: the best valid shows overfitting)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    tests = [r for r in records if r.get("event") == "test"]
    best = min(epochs, key=lambda r: r["valid_perplexity"]) if epochs else None
    return {"valid": epochs[-1]["valid_perplexity"] if epochs else None,
            "best": (best["valid_perplexity"], best["epoch"]) if best else None,
            "test": tests[-1]["test_perplexity"] if tests else None,
            "epochs": epochs[-1]["epoch"] - 1 + epochs[-1].get("fraction", 1.0) if epochs
            else 0.0}


def table(results: Path) -> str:
    full = summary(results)
    rows = [("cpu-hour (everything)", full)]
    rows += [(run.name, summary(run)) for run in sorted((results / "ablation").glob("*"))
             if run.is_dir()]
    lines = ["| run | epochs | valid (last) | best valid (epoch) | test (one stream) | "
             "test vs everything |",
             "|---|---|---|---|---|---|"]
    for name, s in rows:
        if s is None or s["test"] is None:
            lines.append(f"| {name} | unfinished | | | | |")
            continue
        delta = (f"{s['test'] - full['test']:+.2f}" if full and full["test"] is not None
                 and s is not full else "")
        best, epoch = s["best"]
        lines.append(f"| {name} | {s['epochs']:.2f} | {s['valid']:.2f} | {best:.2f} ({epoch}) "
                     f"| {s['test']:.2f} | {delta} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results/ptb-cpu-hour")
    text = table(results)
    (results / "ablation.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
