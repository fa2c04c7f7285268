"""scripts/record-run.sh: a record names its machine (instruction sets included) and a commit
that is the code it ran, or refuses a tree with uncommitted changes unless told to keep them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "record-run.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="needs git and bash")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout holding the script, committed."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "record-run.sh")
    (repo / "code.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return repo


def script_args(repo: Path, *args: str) -> list[str]:
    """record-run.sh with `args` (its options, NAME), the run dir and then the command."""
    return ["bash", str(repo / "scripts" / "record-run.sh"), *args, str(repo / "run"), "--"]


def script_env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join(sys.path)}


def start_script(repo: Path, name: str, *command: str, **popen) -> subprocess.Popen:
    """record-run.sh NAME running `command` in the background."""
    return subprocess.Popen([*script_args(repo, name), *command], env=script_env(),
                            cwd=repo, **popen)


def finished_script(repo: Path, args: tuple[str, ...], command: tuple[str, ...]
                    ) -> subprocess.CompletedProcess:
    """record-run.sh with `args` (its options, NAME) running `command`, to its end."""
    return subprocess.run([*script_args(repo, *args), *command], capture_output=True,
                          text=True, env=script_env(), cwd=repo, timeout=120)


def record(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return finished_script(repo, args, ("echo", "trained"))


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_a_record_names_the_cpu_and_a_clean_commit_or_keeps_the_uncommitted_diff(repo):
    done = record(repo, "first")
    assert done.returncode == 0, done.stderr
    machine = (repo / "results" / "first" / "machine.txt").read_text()
    assert f"lstmkit commit: {git(repo, 'rev-parse', '--short', 'HEAD')} (clean tree)" in machine
    assert "python: " in machine and "torch: " in machine and " threads" in machine
    cpu = next(line for line in machine.splitlines() if line.startswith("cpu: "))
    assert cpu.endswith(")") and "(family " in cpu and ", model " in cpu, cpu
    sets = next(line for line in machine.splitlines() if line.startswith("instruction sets: "))
    caches = next(line for line in machine.splitlines() if line.startswith("caches: "))
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout \
        if shutil.which("lscpu") else ""
    if "L3 cache:" in lscpu:
        assert re.fullmatch(r"caches: L2 .+; L3 \d.+", caches), caches
    if Path("/proc/cpuinfo").exists():
        assert ("AVX2" in sets) == ("avx2" in cpu_flags())
        assert ("AVX-512" in sets) == ("avx512f" in cpu_flags())
    assert (repo / "results" / "first" / "train.log").read_text() == "trained\n"

    (repo / "code.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 3\n")
    done = record(repo, "dirty")
    assert done.returncode == 2 and "uncommitted changes" in done.stderr
    assert "results" not in done.stderr, "an earlier record (uncommitted) is not a change"
    assert not (repo / "results" / "dirty").exists()

    done = record(repo, "--allow-dirty", "dirty")
    assert done.returncode == 0, done.stderr
    kept = repo / "results" / "dirty"
    assert "(dirty tree: uncommitted changes in uncommitted.diff)" in (
        kept / "machine.txt").read_text()
    diff = (kept / "uncommitted.diff").read_text()
    assert "+x = 2" in diff and "+y = 3" in diff


def run_script(repo: Path, name: str, *command: str) -> subprocess.CompletedProcess:
    return finished_script(repo, (name,), command)


def test_a_resumed_segment_is_appended_and_a_fresh_run_never_replaces_a_record(repo):
    assert run_script(repo, "long", "echo", "first").returncode == 0
    assert run_script(repo, "long", "echo", "again").returncode == 2, "fresh run over a record"
    done = run_script(repo, "long", "echo", "--resume", "second")
    assert done.returncode == 0, done.stderr
    out = repo / "results" / "long"
    assert (out / "train.log").read_text() == "first\n--resume second\n"
    machine = (out / "machine.txt").read_text()
    assert machine.count("instruction sets: ") == 2 and "segment 2\n" in machine
    walls = (out / "wall_time.txt").read_text().splitlines()
    assert [w.split(":")[0] for w in walls] == ["segment 1", "segment 2"]
    assert (out / "command.txt").read_text().splitlines()[1].startswith("segment 2: echo")


def test_a_segment_stopped_with_sigterm_still_records_its_wall_time(repo):
    proc = start_script(repo, "stopped", "sleep", "30", stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    out = repo / "results" / "stopped"
    for _ in range(100):
        if (out / "train.log").exists():
            break
        subprocess.run(["sleep", "0.1"], check=True)
    subprocess.run(["sleep", "0.5"], check=True)
    proc.send_signal(15)
    assert proc.wait(timeout=20) == 143  # the run's own status: ended by SIGTERM
    assert "exit status 143" in (out / "wall_time.txt").read_text()


# A run as lstmkit's: the first SIGTERM asks it to stop after its window, so it prints its stop
# line a moment later and exits 128 + 15; it counts the signals that reached it.
STOPPING_RUN = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
print("training", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(1)
print(f"stopped with a checkpoint after {len(got)} signal(s)", flush=True)
sys.exit(143)
"""


@pytest.mark.parametrize("signum", [2, 15, 1], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_to_the_whole_group_stops_the_run_once_and_the_log_keeps_its_end(
        repo, tmp_path, signum):
    """Ctrl-C in a terminal, `timeout` and job schedulers signal every process of the group:
    the run must still hear one stop request (a second means stop at once) and the log's tee
    must outlive the signal to take down the run's stop line."""
    run = tmp_path / "stopping_run.py"
    run.write_text(STOPPING_RUN)
    proc = start_script(repo, "grouped", sys.executable, str(run), start_new_session=True,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = repo / "results" / "grouped"
    for _ in range(200):
        if (out / "train.log").exists() and "training" in (out / "train.log").read_text():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=20) == 143  # the run's own status
    log = (out / "train.log").read_text()
    assert log.endswith("stopped with a checkpoint after 1 signal(s)\n"), log
    assert "exit status 143" in (out / "wall_time.txt").read_text()


def run_of(script: int) -> int:
    """The pid of the run that `script` started: its child leading a process group of its own."""
    for _ in range(200):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                _state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            except OSError:  # gone meanwhile
                continue
            if int(parent) == script and group == stat.parent.name:
                return int(group)
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"record-run.sh (pid {script}) started no run")


def test_a_segment_killed_outright_is_accounted_for_by_the_next(repo):
    """SIGKILL leaves no wall time: the next segment writes it, up to the run's last metrics."""
    assert run_script(repo, "killed", "echo", "first").returncode == 0
    proc = start_script(repo, "killed", "bash", "-c", "sleep 30", "--resume",
                        start_new_session=True, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    out = repo / "results" / "killed"
    for _ in range(100):
        if "segment 2\ndate: " in (out / "machine.txt").read_text():
            break
        subprocess.run(["sleep", "0.1"], check=True)
    started = next(line for line in (out / "machine.txt").read_text().splitlines()[::-1]
                   if line.startswith("date: "))
    run = run_of(proc.pid)
    os.killpg(proc.pid, 9)
    os.killpg(run, 9)  # the machine taken away: the run (a group of its own) too
    proc.wait(timeout=20)
    metrics = repo / "run" / "metrics.jsonl"
    metrics.parent.mkdir(exist_ok=True)
    with open(repo / ".git" / "info" / "exclude", "a") as exclude:  # a run dir is no change
        exclude.write("run/\n")
    metrics.write_text('{"event": "progress"}\n')
    begin = datetime.strptime(started, "date: %Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    os.utime(metrics, (begin.timestamp() + 754, begin.timestamp() + 754))

    done = run_script(repo, "killed", "echo", "--resume", "third")
    assert done.returncode == 0, done.stderr
    walls = (out / "wall_time.txt").read_text().splitlines()
    assert [w.split(":")[0] for w in walls] == ["segment 1", "segment 2", "segment 3"]
    assert walls[1].startswith("segment 2: wall time: about 754 s (12.6 min), from its start"), \
        walls[1]
    assert "killed before it could record one" in walls[1]
    assert (out / "metrics.jsonl").read_text() == metrics.read_text()
