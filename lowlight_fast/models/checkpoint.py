"""Reading and writing weights in the original key layout (``.pth``/``.pt`` or ``.safetensors``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


def _unwrap(obj, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: a plain state_dict, or one under "state_dict"/"model"
    (training checkpoints), with a DataParallel "module." prefix removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: not a state_dict (expected a mapping of parameter names to tensors)")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(source, map_location="cpu") -> dict[str, torch.Tensor]:
    """A state_dict from a path (``.safetensors`` or a torch file read with ``weights_only=True``) or a mapping."""
    if isinstance(source, Mapping):
        return _unwrap(source, "state_dict")
    path = Path(os.fspath(source))
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device=str(map_location))
        else:
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled objects beyond tensors
        raise ValueError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, str(path))


def detect_architecture(sd: StateDict) -> str | None:
    """"zerodce", "zerodcepp" or "sci" from the key layout of a state_dict, or None."""
    keys = set(sd)
    if "e_conv1.depth_conv.weight" in keys:
        return "zerodcepp"
    if "e_conv1.weight" in keys and "e_conv7.weight" in keys:
        return "zerodce"
    if "enhance.in_conv.0.weight" in keys:
        return "sci"
    return None


def check_finite(sd: StateDict, source: str) -> None:
    """A ValueError naming the first tensor of ``sd`` that holds NaN or inf (such weights turn every
    image into NaN, which 8-bit output writes as black)."""
    for key, t in sd.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: {key} holds {bad} non-finite value(s) (NaN or inf); "
                             "these weights are unusable (a diverged training run?)")


def load_weights(model: nn.Module, source, map_location="cpu", strict: bool = True) -> nn.Module:
    """Load original-layout weights into ``model`` (subnormal values are flushed to zero); returns it.
    Weights holding NaN or inf are refused with a ValueError."""
    sd = read_state_dict(source, map_location=map_location)
    check_finite(sd, "state_dict" if isinstance(source, Mapping) else str(source))
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as exc:
        arch = detect_architecture(sd)
        hint = f" These look like {arch} weights." if arch else ""
        raise ValueError(f"weights do not fit {type(model).__name__}.{hint}\n{exc}") from exc
    return model


def save_weights(model: nn.Module, path) -> None:
    """Write ``model``'s state_dict (all alias keys, as the originals write them) atomically.

    ``.safetensors`` for a safe format; any other suffix gives a ``torch.save`` file that loads with
    ``weights_only=True``. Weights holding NaN or inf are refused (ValueError) and ``path`` is left as it was.
    """
    path = Path(os.fspath(path))
    # clone: aliased (shared) modules give tensors sharing storage, which safetensors refuses
    sd = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    check_finite(sd, f"{type(model).__name__} (not written to {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden and per process: never taken for an input, never shared by two writers
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp))
        else:
            torch.save(sd, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
