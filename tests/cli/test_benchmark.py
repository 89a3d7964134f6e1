"""``lowlight-fast benchmark`` as a subprocess: a table row per model and mode, clear usage errors."""
from __future__ import annotations

from tests.cli.conftest import run_cli


def _same_time(ms: float, images_s: float, batch: int) -> bool:
    """Whether a step time printed in ms to 0.1 and a rate printed in images/s to 0.01 can be one time:
    the intervals the two printed values stand for overlap (whatever the machine's speed)."""
    slack = 1e-9 * ms  # the decimal-to-binary rounding of the printed values
    ms_lo, ms_hi = ms - 0.05 - slack, ms + 0.05 + slack
    rate_lo, rate_hi = images_s - 0.005, images_s + 0.005
    from_rate_lo = batch * 1e3 / rate_hi
    from_rate_hi = batch * 1e3 / rate_lo if rate_lo > 0 else float("inf")
    return ms_lo <= from_rate_hi * (1 + 1e-9) and from_rate_lo * (1 - 1e-9) <= ms_hi


def test_same_time_allows_the_printed_precision_at_any_speed():
    assert _same_time(259.2, 7.72, batch=2)  # 2000 / 7.72 = 259.07, more than 0.05 ms off: still one time
    assert _same_time(1.0, 2000.0, batch=2) and _same_time(0.1, 20000.0, batch=2)
    assert _same_time(400000.0, 0.0, batch=2)  # a rate below 0.005 images/s prints as 0.00
    assert not _same_time(259.2, 7.6, batch=2) and not _same_time(1.0, 1900.0, batch=2)


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
        assert _same_time(fused_ms, images_s, batch=2)
        assert cells[6].endswith("x")


def test_benchmark_usage_errors():
    bad_size = run_cli("benchmark", "--size", "8x8")
    assert bad_size.returncode == 2 and "at least 16x16" in bad_size.stderr
    bad_repeats = run_cli("benchmark", "--repeats", "0", "--device", "cpu")
    assert bad_repeats.returncode == 2 and "--repeats" in bad_repeats.stderr
