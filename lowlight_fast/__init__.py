"""lowlight_fast: fast, checkpoint-compatible Zero-DCE, Zero-DCE++ and SCI for PyTorch.

- ``lowlight_fast.models``: ZeroDCE, ZeroDCEPlusPlus, SCINetwork, SCIFinetune (original parameter names)
- ``lowlight_fast.losses``: the papers' losses (original names and signatures) on the fused ops
- ``lowlight_fast.ops``: the fused ops; ``lowlight_fast.reference``: the plain-PyTorch originals
- ``lowlight_fast.compat``: modules named like the authors' files; ``accelerate(module)``

Importing the package itself does not import torch (the command line sets allocator options first);
the names below load on first use.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "accelerate", "build_info", "use_backend"]


def __getattr__(name):
    if name == "build_info":
        from lowlight_fast._ext import build_info

        return build_info
    if name == "use_backend":
        from lowlight_fast.backend import use_backend

        return use_backend
    if name == "accelerate":
        from lowlight_fast.compat.accelerate import accelerate

        return accelerate
    raise AttributeError(f"module 'lowlight_fast' has no attribute {name!r}")
