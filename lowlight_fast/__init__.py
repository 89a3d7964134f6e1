"""lowlight_fast: fast, checkpoint-compatible Zero-DCE, Zero-DCE++ and SCI for PyTorch.

- ``lowlight_fast.models``: ZeroDCE, ZeroDCEPlusPlus, SCINetwork, SCIFinetune (original parameter names)
- ``lowlight_fast.losses``: the papers' losses (original names and signatures) on the fused ops
- ``lowlight_fast.ops``: the fused ops; ``lowlight_fast.reference``: the plain-PyTorch originals
- ``lowlight_fast.compat``: modules named like the authors' files; ``accelerate(module)``

``lowlight_fast.keep_freed_memory()`` keeps freed CPU tensor memory for reuse (lowlight_fast.memory).
Importing the package itself does not import torch (the command line sets allocator options first);
the names below load on first use.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "accelerate", "build_info", "keep_freed_memory", "use_backend"]


def __getattr__(name):
    if name == "build_info":
        from lowlight_fast._ext import build_info

        return build_info
    if name == "use_backend":
        from lowlight_fast.backend import use_backend

        return use_backend
    if name == "keep_freed_memory":
        from lowlight_fast.memory import keep_freed_memory

        return keep_freed_memory
    if name == "accelerate":
        from lowlight_fast.compat.accelerate import accelerate

        return accelerate
    raise AttributeError(f"module 'lowlight_fast' has no attribute {name!r}")
