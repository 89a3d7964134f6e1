"""Backward of a loss that computed its input gradients in the forward pass (Liger-Kernel's pattern).

The forward op returns ``(loss, d loss/d input, ...)``; the gradients are saved, and the registered
backward only has to scale them by the incoming gradient of the loss. When that gradient is exactly 1,
which is what ``loss.backward()`` sends to a loss or to each term of a sum of losses, the saved tensor
is handed over as it is: no pass over memory and no new allocation. Autograd then takes it as ``.grad``
(or adds into it in place) once the graph has released it, and copies it when something else still
holds it (``retain_graph=True``), so a retained graph still gives the same gradient on every call.
"""
from __future__ import annotations

import torch


def _is_one(grad: torch.Tensor) -> bool:
    # Only for plain CPU tensors outside tracing: reading a CUDA value would synchronise, and fake or
    # functional tensors (torch.compile) have no value to read.
    return (
        type(grad) is torch.Tensor
        and grad.device.type == "cpu"
        and grad.numel() == 1
        and not torch.compiler.is_compiling()
        and grad.item() == 1.0
    )


def scale_saved(grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """``grad * saved`` for the scalar gradient ``grad`` of a loss: ``saved`` itself when grad is 1."""
    if _is_one(grad) and grad.dtype == saved.dtype:
        return saved
    return grad * saved
