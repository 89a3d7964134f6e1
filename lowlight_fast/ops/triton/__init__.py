"""Triton kernels (GPU; tested on CPU tensors with TRITON_INTERPRET=1). Each module is imported on first
use of the triton backend: importing triton takes seconds."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch.library import triton_op

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_op(name: str, fake: Callable) -> Callable:
    """Registers a function that launches Triton kernels as the custom op ``name``.

    On GPUs: ``torch.library.triton_op`` (torch.compile sees and can optimise the kernels; the fake
    impl is the function itself). Under TRITON_INTERPRET=1 the interpreter cannot run on the fake
    tensors that tracing passes, so the op is an opaque ``torch.library.custom_op`` with ``fake``.
    """

    def register(fn: Callable):
        if INTERPRETED:
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return triton_op(name, fn, mutates_args=())

    return register
