"""scripts/ablation_table.py: the cpu-hour ablation table from recorded metrics logs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ablation_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(directory: Path, valids: list[float], test: float | None,
              fraction: float = 1.0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    records = [{"event": "epoch", "epoch": i + 1, "valid_perplexity": v}
               for i, v in enumerate(valids)]
    records[-1]["fraction"] = fraction
    if test is not None:
        records.append({"event": "test", "test_perplexity": test})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_table_lists_each_piece_off_against_everything_and_marks_unfinished_runs(tmp_path):
    results = tmp_path / "ptb-cpu-hour"
    write_run(results, [120.0, 90.0, 85.5], 82.0, fraction=0.25)
    write_run(results / "ablation" / "no-weight-drop", [118.0, 91.0], 86.5)
    write_run(results / "ablation" / "no-tied-weights", [130.0], None)
    table = load_script().table(results)
    lines = table.splitlines()
    assert lines[2] == "| cpu-hour (everything) | 2.25 | 85.50 | 85.50 (3) | 82.00 |  |"
    assert "| no-tied-weights | unfinished | | | | |" in lines
    assert "| no-weight-drop | 2.00 | 91.00 | 91.00 (2) | 86.50 | +4.50 |" in lines


def test_the_best_valid_and_its_epoch_show_a_run_that_overfits(tmp_path):
    results = tmp_path / "ptb-cpu-hour"
    write_run(results, [120.0, 90.0], 88.0)
    write_run(results / "ablation" / "no-locked-dropout", [100.0, 95.0, 110.0], 107.0)
    lines = load_script().table(results).splitlines()
    assert "| no-locked-dropout | 3.00 | 110.00 | 95.00 (2) | 107.00 | +19.00 |" in lines
