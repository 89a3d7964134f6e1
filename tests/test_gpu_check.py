"""scripts/gpu_check.sh, rehearsed on the CPU: every stage runs and writes the files a GPU run writes,
so that the script a short GPU run depends on has run before that run."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"summary.json", "env.json", "build.txt", "tests.txt", "headline.jsonl", "headline.md", "rest.txt"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    # a budget no stage reaches, however loaded the machine: this checks what the stages do, not how fast
    # (the time a rehearsal takes is measured in benchmarks/RESULTS.md)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--rehearse", "--budget", "3000",
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    return res, out


def test_rehearsal_runs_every_stage(rehearsal):
    res, out = rehearsal
    summary = json.loads((out / "summary.json").read_text())
    statuses = {k: v["status"] for k, v in summary["stages"].items()}
    assert statuses == {"1": "passed", "2": "passed", "3": "passed", "4": "passed"}, (statuses, res.stdout[-3000:])
    assert res.returncode == 0
    assert summary["rehearsal"] is True
    assert summary["stages"]["2"]["tests"] > 0 and summary["stages"]["2"]["failures"] == 0
    assert summary["stages"]["4"]["tests"] > 0


def test_rehearsal_writes_the_layout_of_a_gpu_run(rehearsal):
    _, out = rehearsal
    names = {p.name for p in out.iterdir()}
    assert names == LAYOUT  # few files: the device tool returns at most 8
    assert all(p.is_file() for p in out.iterdir())
    env = json.loads((out / "env.json").read_text())
    assert {"python", "torch", "devices", "triton", "pytest_benchmark"} <= set(env)


def test_rehearsal_measures_every_headline_case(rehearsal):
    _, out = rehearsal
    rows = [json.loads(line) for line in (out / "headline.jsonl").read_text().splitlines()]
    hl = _module()
    cases = {r["case"] for r in rows}
    assert len(cases) == 10, cases
    for case in cases:
        impls = {r["impl"]: r for r in rows if r["case"] == case}
        expected = {"ours"} if case.startswith("copy") else {"eager", "compiled", "ours"}
        if "frames from host" in case:
            expected = {"model", "call", "stream", "stream fp16"}
        assert set(impls) == expected, (case, impls)
        for r in impls.values():
            assert r["median_s"] > 0 and r["repeats"] >= 1, r
    assert any("gbps" in r for r in rows)
    table = (out / "headline.md").read_text()
    assert "| case | impl | median ms |" in table and "le_curve fwd" in table
    assert hl.STAGES[3][0] == "headline benchmarks"


def test_a_stage_past_its_budget_is_killed_even_when_silent(tmp_path):
    hl = _module()
    check = hl.Check(tmp_path, budget=60, rehearse=True, python=sys.executable)
    t0 = time.monotonic()
    rc, _ = check.run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log.txt", timeout=1)
    assert rc == 124
    assert time.monotonic() - t0 < 30
    assert "killed after" in (tmp_path / "log.txt").read_text()


def test_a_failing_stage_is_recorded_and_the_next_ones_still_run(tmp_path):
    hl = _module()
    check = hl.Check(tmp_path, budget=60, rehearse=True, python=sys.executable)

    def broken(budget):
        raise RuntimeError("boom")

    check.stage(2, broken)
    check.stage(3, lambda budget: {"status": "passed"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["2"]["status"] == "error" and "boom" in summary["stages"]["2"]["error"]
    assert summary["stages"]["3"]["status"] == "passed"


@pytest.mark.parametrize("args", [["--budget", "0"], ["--stages", "5"], ["--stages", "x"]])
def test_bad_arguments_are_refused(args):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "error:" in res.stderr


def test_a_killed_stage_leaves_no_process_behind(tmp_path):
    # ninja starts each compiler in a process group of its own: killing the command's group is not enough
    hl = _module()
    check = hl.Check(tmp_path, budget=60, rehearse=True, python=sys.executable)
    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '120'], process_group=0); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    rc, _ = check.run([sys.executable, "-c", script], tmp_path / "log.txt", timeout=3)
    assert rc == 124
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break  # killed, not yet reaped by its (also killed) parent
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child} of the killed stage still runs")
