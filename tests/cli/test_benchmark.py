"""``lowlight-fast benchmark`` as a subprocess: a table row per model and mode, clear usage errors."""
from __future__ import annotations

from tests.cli.conftest import run_cli


def test_benchmark_times_every_model_and_mode():
    proc = run_cli("benchmark", "--size", "64x48", "--batch", "2", "--repeats", "1", "--warmup", "0",
                   "--reference", "--device", "cpu", check=True, env_extra={"OMP_NUM_THREADS": "1"})
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| model | mode |")
    body = rows[1:]
    assert len(body) == 6  # 3 models x (inference, train)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] in ("inference", "train") and cells[2] == "2 x 64x48"
        fused_ms, images_s, ref_ms = float(cells[3]), float(cells[4]), float(cells[5])
        assert fused_ms > 0 and ref_ms > 0
        assert abs(fused_ms - 2e3 / images_s) <= 0.051  # the same time; ms printed to 0.1
        assert cells[6].endswith("x")


def test_benchmark_usage_errors():
    bad_size = run_cli("benchmark", "--size", "8x8")
    assert bad_size.returncode == 2 and "at least 16x16" in bad_size.stderr
    bad_repeats = run_cli("benchmark", "--repeats", "0", "--device", "cpu")
    assert bad_repeats.returncode == 2 and "--repeats" in bad_repeats.stderr
