"""Access to the conformance fixtures in ../shared/parity (outputs of the original code).

Set LOWLIGHT_FAST_PARITY to another folder to use fixtures elsewhere; tests skip when absent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

DIR = Path(os.environ.get("LOWLIGHT_FAST_PARITY", Path(__file__).resolve().parents[1].parent / "shared" / "parity"))


def load(name: str) -> dict[str, torch.Tensor]:
    """Arrays of ``<name>.npz`` as tensors; skips the test when the fixtures are not on this machine."""
    path = DIR / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"parity fixtures not found at {path}")
    with np.load(path) as data:
        return {k: torch.from_numpy(np.array(data[k])) for k in data.files}


def expected() -> dict:
    path = DIR / "expected.json"
    if not path.is_file():
        pytest.skip(f"parity fixtures not found at {path}")
    return json.loads(path.read_text())


def params(arrays: dict[str, torch.Tensor], prefix: str = "param/") -> dict[str, torch.Tensor]:
    """The state_dict stored under ``prefix`` (original key names)."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
