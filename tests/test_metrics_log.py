"""The metrics log: a deferred record goes out with the next one, and a rewind past it (a
rollback, a resume) sends it again, once."""

import json

from lstmkit.reporting import MetricsLog


def events(path):
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_a_deferred_record_waits_for_the_next_one(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.defer({"event": "setup"})
    assert not (tmp_path / "m.jsonl").exists(), "nothing written until a record follows"
    log.write({"event": "progress"})
    assert events(tmp_path / "m.jsonl") == ["setup", "progress"]


def test_a_rewind_past_a_deferred_record_writes_it_again_once(tmp_path):
    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    log.defer({"event": "setup"})
    log.write({"event": "progress"})
    log.truncate_to(0)  # a rollback to a checkpoint taken before the first record
    log.write({"event": "rollback"})
    assert events(path) == ["setup", "rollback"]
    kept = log.size()
    log.write({"event": "epoch"})
    log.truncate_to(kept)  # a rewind that keeps it: not repeated
    log.write({"event": "test"})
    assert events(path) == ["setup", "rollback", "test"]
