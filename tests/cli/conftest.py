"""Helpers for driving ``lowlight-fast`` as a subprocess on real files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def cli_command() -> list[str]:
    """The installed ``lowlight-fast`` script of this interpreter's environment, else ``python -m``."""
    exe = shutil.which("lowlight-fast", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "lowlight_fast"]


def run_cli(*args, check: bool | None = None, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TQDM_DISABLE", "0")
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run(cli_command() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    if check is True:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Weights for each model: random init scaled up, so the curves change the image strongly."""
    from lowlight_fast.models import build_model, save_weights

    d = tmp_path_factory.mktemp("weights")
    gen = torch.Generator().manual_seed(1234)
    for name in ("zerodce", "zerodcepp", "sci"):
        m = build_model(name)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.1))
        save_weights(m, d / f"{name}.safetensors")
    return d


def model_output(name: str, weights: Path, rgb: np.ndarray, bits: int = 8, **kwargs) -> np.ndarray:
    """What the model called in Python gives for an H x W x 3 float32 image, quantised like the CLI."""
    from lowlight_fast.models import build_model, load_weights

    m = build_model(name, **kwargs)
    load_weights(m, weights)
    m.eval()
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        y = m.enhance_image(x)[0].numpy().transpose(1, 2, 0)
    peak = 65535 if bits == 16 else 255
    return np.floor(np.clip(y, 0, 1) * np.float32(peak) + np.float32(0.5)).astype(np.uint16 if bits == 16 else np.uint8)
