"""The GPU check in stages, each with its own time budget, every result written as soon as it exists.

    bash scripts/gpu_check.sh [--budget SECONDS] [--rehearse] [--stages 1,2,3,4]

Stages (results under $OUT/gpu_check, else out/gpu_check; summary.json is rewritten after each stage,
so a run cut short still says what it reached):
1. environment (env.json) and the in-place build for the visible GPU only (build.txt; MAX_JOBS = all
   cores; TORCH_CUDA_ARCH_LIST unset, so torch builds for the GPU it sees).
2. the op, model and compat tests on cuda: parity, gradcheck, opcheck, compile, the Triton and the
   CUDA C++ paths (tests.txt, tests.xml), a per-test timeout (pytest-timeout, else none).
3. the headline benchmarks in one process (benchmarks/headline.py: CUDA events after warm-up, each
   against eager and torch.compile, GB/s against a device-to-device copy, peak memory):
   headline.jsonl, headline.md.
4. whatever else fits the rest of the budget: the remaining tests on cuda (rest.txt).

``--rehearse``: the same stages on the CPU, so that this script is tested before any GPU run (the test
suite runs it): the build stage checks the build is current (and builds only when it is not), the test
stages run a small selection with Triton under the interpreter, and the headline cases run at tiny
shapes with torch.compile's "eager" backend (inductor's compile time would dominate).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (stage, share of the total budget): the shares are caps, time a stage leaves unused goes to the next
STAGES = {1: ("environment and build", 0.30), 2: ("tests on cuda", 0.30), 3: ("headline benchmarks", 0.30),
          4: ("the rest", 1.00)}
GPU_TESTS = ["tests/ops", "tests/models", "tests/compat"]
# the rest on a GPU: what runs on tensors of a device; the CLI's subprocess tests and the fuzzers add
# nothing there
REST_TESTS = ["tests/test_losses_zerodce.py", "tests/train", "tests/cli/test_enhance_api.py", "tests/cli/test_tiling.py"]
# the rehearsal's small selection: one file of each kind of op test, Triton under the interpreter
REHEARSE_TESTS = ["tests/ops/test_tv_loss.py::test_forward_backward_match_reference[cpu-shape0-triton]",
                  "tests/ops/test_tv_loss.py::test_forward_backward_match_reference[cpu-shape0-cpp]",
                  "tests/ops/test_registry.py"]
REHEARSE_REST = ["tests/ops/test_saved_grad.py"]


class Check:
    def __init__(self, out: Path, budget: float, rehearse: bool, python: str):
        self.out, self.budget, self.rehearse, self.python = out, budget, rehearse, python
        self.start = time.monotonic()
        self.summary = {"rehearsal": rehearse, "budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "stages": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        PYTHONUNBUFFERED="1")
        self.env.pop("LOWLIGHT_FAST_BACKEND", None)
        if rehearse:
            self.env.update(LOWLIGHT_FAST_TEST_DEVICE="cpu", TRITON_INTERPRET="1", LOWLIGHT_FAST_BENCH_DEVICE="cpu")
        else:
            self.env.pop("TRITON_INTERPRET", None)
            self.env.update(LOWLIGHT_FAST_TEST_DEVICE="cuda", LOWLIGHT_FAST_BENCH_DEVICE="cuda")

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def write_summary(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def run(self, cmd: list[str], log: Path, timeout: float, env=None) -> tuple[int, float]:
        """Runs ``cmd``, its output streamed to ``log`` (and to stdout) as it comes; killed with its
        process group at ``timeout`` (exit status 124), also when it prints nothing."""
        t0 = time.monotonic()
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)

            def pump():
                for line in proc.stdout:  # type: ignore[union-attr]
                    f.write(line)
                    f.flush()
                    sys.stdout.write(line)
                    sys.stdout.flush()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                _kill_session(proc.pid)
                proc.wait()
                rc = 124
            reader.join(timeout=10)
            if rc == 124:
                f.write(f"\n[gpu_check: killed after {timeout:.0f} s, the stage's budget]\n")
        return rc, time.monotonic() - t0

    def stage(self, number: int, fn) -> None:
        title, share = STAGES[number]
        budget = min(self.left(), self.budget * share)
        entry = {"title": title, "budget_s": round(budget, 1)}
        self.summary["stages"][str(number)] = entry
        print(f"\n=== stage {number}: {title} (budget {budget:.0f} s) ===", flush=True)
        if budget < 5:
            entry["status"] = "skipped: no budget left"
            self.write_summary()
            return
        t0 = time.monotonic()
        try:
            entry.update(fn(budget))
        except Exception as exc:  # noqa: BLE001 -- recorded, and the next stages still run
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}")
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.write_summary()

    # --- the stages ---------------------------------------------------------------------------

    def environment_and_build(self, budget: float) -> dict:
        probe = r"""
import json, os, platform, sys
import torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "platform": platform.platform(), "cpus": os.cpu_count(), "devices": []}
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    info["devices"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
for mod in ("triton", "pytest", "pytest_benchmark", "pytest_timeout", "numpy"):
    try:
        info[mod] = getattr(__import__(mod), "__version__", "present")
    except ImportError:
        info[mod] = None
print(json.dumps(info))
"""
        res = subprocess.run([self.python, "-c", probe], cwd=ROOT, env=self.env, capture_output=True, text=True,
                             timeout=max(budget, 5))
        if res.returncode != 0:
            (self.out / "env.json").write_text(json.dumps({"error": res.stderr[-4000:]}) + "\n")
            return {"status": "failed", "error": "the environment probe failed: " + res.stderr.strip()[-300:]}
        env = json.loads(res.stdout.strip().splitlines()[-1])
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True)
            env["nvidia_smi"] = smi.stdout.strip()
        nvcc = shutil.which("nvcc")
        env["nvcc"] = nvcc and subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.summary["environment"] = env
        (self.out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        missing = [m for m in ("triton", "pytest", "pytest_benchmark") if env.get(m) is None]
        if not self.rehearse and not env["devices"]:
            return {"status": "failed", "error": "torch sees no CUDA device (a CPU build of torch, or no GPU)"}
        if missing:
            return {"status": "failed", "error": "missing Python packages: " + ", ".join(missing)}

        log = self.out / "build.txt"
        log.write_text("")
        build_env = dict(self.env, MAX_JOBS=str(os.cpu_count() or 1))
        build_env.pop("TORCH_CUDA_ARCH_LIST", None)  # torch then builds for the visible GPU only
        if self.rehearse:  # the build scripts/setup.sh made must be current; rebuilding is not rehearsed
            current = subprocess.run([self.python, "setup.py", "--inputs-hash"], cwd=ROOT, env=build_env,
                                     capture_output=True, text=True).stdout.strip()
            stamp = ROOT / "lowlight_fast" / ".build-inputs.sha256"
            if not (stamp.exists() and stamp.read_text().strip() == current):
                return {"status": "failed", "error": "the in-place build is not current with the sources: "
                        "run scripts/setup.sh first (the rehearsal does not rebuild)"}
            log.write_text("rehearsal: the in-place build is current (setup.py --inputs-hash), not rebuilt\n")
            rc = 0
        else:
            rc, _ = self.run([self.python, "setup.py", "build_ext", "--inplace"], log, budget, env=build_env)
        if rc != 0:
            return {"status": "failed" if rc != 124 else "timeout", "error": f"the build exited {rc} (build.txt)"}
        info = subprocess.run([self.python, "-c", "import json, lowlight_fast; print(json.dumps(lowlight_fast.build_info()))"],
                              cwd=ROOT, env=self.env, capture_output=True, text=True)
        if info.returncode != 0:
            return {"status": "failed", "error": "the built package does not import: " + info.stderr.strip()[-300:]}
        build = json.loads(info.stdout.strip().splitlines()[-1])
        if not self.rehearse and not build.get("cuda"):
            return {"status": "failed", "error": "built without the CUDA kernels (build.txt)", "build_info": build}
        return {"status": "passed", "build_info": build}

    def pytest(self, paths: list[str], name: str, budget: float, per_test: int) -> dict:
        with tempfile.TemporaryDirectory() as tmp:  # the report is read into summary.json: few files come back
            junit = Path(tmp) / "report.xml"
            cmd = [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}", *paths]
            if self.summary.get("environment", {}).get("pytest_timeout"):
                cmd.append(f"--timeout={per_test}")
            log = self.out / f"{name}.txt"
            log.write_text("")
            rc, _ = self.run(cmd, log, budget)
            counts = _junit_counts(junit)
        status = {0: "passed", 124: "timeout", 5: "no tests"}.get(rc, "failed")
        return {"status": status, "exit": rc, **counts}

    def tests(self, budget: float) -> dict:
        return self.pytest(REHEARSE_TESTS if self.rehearse else GPU_TESTS, "tests", budget, per_test=120)

    def headline(self, budget: float) -> dict:
        cmd = [self.python, "benchmarks/headline.py", "--out", str(self.out), "--budget", str(max(budget - 20, 5))]
        if self.rehearse:
            cmd += ["--device", "cpu", "--tiny", "--compile-backend", "eager"]
        log = self.out / "headline.log"
        rc, _ = self.run(cmd, log, budget)
        rows = [json.loads(line) for line in (self.out / "headline.jsonl").read_text().splitlines() if line.strip()] \
            if (self.out / "headline.jsonl").exists() else []
        log.unlink(missing_ok=True)  # its content is in headline.jsonl and stdout; few files come back
        measured = sum("median_s" in r for r in rows)
        errors = [f"{r['case']} / {r['impl']}: {r['error']}" for r in rows if "error" in r]
        status = "timeout" if rc == 124 else ("passed" if rc == 0 else "failed")
        return {"status": status, "exit": rc, "measured": measured, "skipped": sum("skipped" in r for r in rows),
                "errors": errors[:20]}

    def rest(self, budget: float) -> dict:
        return self.pytest(REHEARSE_REST if self.rehearse else REST_TESTS, "rest", budget, per_test=120)


def _kill_session(sid: int) -> None:
    """Kills every process of session ``sid`` (the command was started in a session of its own): its
    process group is not enough, since ninja starts each compiler in a process group of its own."""
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    try:
        os.killpg(sid, signal.SIGKILL)
    except OSError:
        pass


def _junit_counts(path: Path) -> dict:
    try:
        import xml.etree.ElementTree as ET

        root = ET.parse(path).getroot()
    except (OSError, Exception):  # noqa: BLE001 -- a killed run leaves no (or a partial) report
        return {}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    attrs = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {**attrs, "failed_tests": failed[:30]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=480.0, help="total seconds (default 480, 8 minutes)")
    ap.add_argument("--rehearse", action="store_true", help="the same stages on the CPU, at tiny sizes")
    ap.add_argument("--stages", default="1,2,3,4", help="which stages to run, e.g. 1,3")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default $OUT/gpu_check or out/gpu_check)")
    args = ap.parse_args(argv)
    if args.budget <= 0:
        ap.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    try:
        wanted = {int(s) for s in args.stages.split(",") if s.strip()}
    except ValueError:
        ap.error(f"--stages: expected numbers from 1 to 4 separated by commas, got {args.stages!r}")
    if not wanted or not wanted <= set(STAGES):
        ap.error(f"--stages: expected numbers from 1 to 4 separated by commas, got {args.stages!r}")
    out = args.out or Path(os.environ.get("OUT") or ROOT / "out") / "gpu_check"
    python = os.environ.get("PYTHON") or (str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists()
                                          else sys.executable)
    check = Check(out, args.budget, args.rehearse, python)
    check.summary["machine"] = platform.node()
    steps = {1: check.environment_and_build, 2: check.tests, 3: check.headline, 4: check.rest}
    for number in sorted(wanted):
        if number > 1 and check.summary["stages"].get("1", {}).get("status") not in (None, "passed"):
            check.summary["stages"][str(number)] = {"title": STAGES[number][0], "status": "skipped: stage 1 failed"}
            check.write_summary()
            continue
        check.stage(number, steps[number])
    check.write_summary()
    if (out / "headline.md").exists():
        print("\n" + (out / "headline.md").read_text())
    print(json.dumps({k: v.get("status") for k, v in check.summary["stages"].items()}))
    ok = all(v.get("status") == "passed" for v in check.summary["stages"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
