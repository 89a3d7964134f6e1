"""How every op module registers its ops with ``torch.library``: one way for all of them.

- :func:`register_cpp`: the fake implementation and autograd formula of an op of the compiled
  extension (its schema is in csrc/ops.cpp).
- :func:`define_triton`: a Triton op ``lowlight_fast::<op>_triton`` from its launcher in
  ``lowlight_fast/ops/triton/<module>.py``; an op module does this in a function marked with
  :func:`triton_registration`, which :func:`use_triton` runs on the first use of the triton backend.
"""
from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Callable

import torch

from lowlight_fast import _ext, backend

_NAMESPACE = "lowlight_fast"
_triton_registrations: dict[str, Callable[[ModuleType], None]] = {}
_triton_registered: set[str] = set()
_triton_lock = threading.Lock()  # two threads using the triton backend first must not register twice


def register_cpp(
    name: str, *, fake: Callable, backward: Callable | None = None, setup_context: Callable | None = None
) -> None:
    """Registers the fake, and the autograd formula when ``backward`` is given, of the C++ op
    ``torch.ops.lowlight_fast.<name>``.

    Only when the loaded extension defines that op: the package imports, and runs the reference,
    without the extension.
    """
    if not _ext.has_op(name):
        return
    qualname = f"{_NAMESPACE}::{name}"
    torch.library.register_fake(qualname, fake)
    if backward is not None and not has_cpp_autograd(name):
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def has_cpp_autograd(name: str) -> bool:
    """Whether the extension registers the autograd of ``lowlight_fast::<name>`` in C++ (a
    ``torch::autograd::Function`` for the Autograd key, e.g. csrc/cpu/zerodce_autograd.cpp): then the
    Python formula given to :func:`register_cpp` is the reference it follows, not registered."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NAMESPACE}::{name}", "Autograd")


def define_triton(
    name: str,
    launcher: Callable,
    *,
    fake: Callable,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
) -> None:
    """Defines the op ``torch.ops.lowlight_fast.<name>`` implemented by ``launcher`` (a function that
    launches Triton kernels; its annotations give the schema), with the autograd formula when given.

    On GPUs a ``torch.library.triton_op``: torch.compile traces into the launcher, so inductor sees
    the kernels, and the launcher is its own fake. Under TRITON_INTERPRET=1 an opaque
    ``torch.library.custom_op`` with ``fake``: triton_op's fake tracing would run the interpreter on
    fake tensors.
    """
    qualname = f"{_NAMESPACE}::{name}"
    if backend.triton_interpreted():
        op = torch.library.custom_op(qualname, launcher, mutates_args=())
        op.register_fake(fake)
    else:
        op = torch.library.triton_op(qualname, launcher, mutates_args=())
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)


def triton_registration(kernels: str) -> Callable:
    """Marks ``fn(kernel_module)`` as the function that defines the Triton ops whose launchers are in
    ``lowlight_fast.ops.triton.<kernels>``; :func:`use_triton` runs it once."""

    def record(fn: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        assert kernels not in _triton_registrations, f"two Triton registrations for {kernels}"
        _triton_registrations[kernels] = fn
        return fn

    return record


def use_triton(kernels: str) -> bool:
    """Imports ``lowlight_fast.ops.triton.<kernels>`` and defines its Triton ops, on the first call;
    call it before using ``torch.ops.lowlight_fast.<op>_triton``. Returns True.

    Not done at import: the kernel modules import triton, which takes seconds. Under torch.compile the
    call runs for real while Dynamo traces, and stays out of the graph (it is marked as
    ``torch.compiler.assume_constant_result`` marks functions): Dynamo cannot trace an op registration.
    """
    if kernels not in _triton_registered:
        with _triton_lock:
            if kernels not in _triton_registered:
                _triton_registrations[kernels](importlib.import_module(f"{__package__}.triton.{kernels}"))
                _triton_registered.add(kernels)
    return True


# What torch.compiler.assume_constant_result(use_triton) sets; calling it would import torch._dynamo, and
# with it triton, at import (tests/ops/test_registry.py checks that the decorator still sets this).
use_triton._dynamo_marked_constant = True  # type: ignore[attr-defined]
