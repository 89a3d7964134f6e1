"""Choosing the device a command runs on (``--device auto|cpu|cuda|cuda:N``)."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device that cannot be used here; the message says which and what to try."""


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; otherwise the named device,
    checked to exist (a DeviceError naming it when it does not)."""
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            raise DeviceError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"--device {name}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name} asked for, but torch sees no CUDA device (try --device cpu)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev
