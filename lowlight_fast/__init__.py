"""lowlight_fast: fast, checkpoint-compatible Zero-DCE, Zero-DCE++ and SCI for PyTorch.

- ``lowlight_fast.models``: ZeroDCE, ZeroDCEPlusPlus, SCINetwork, SCIFinetune (original parameter names)
- ``lowlight_fast.losses``: the papers' losses (original names and signatures) on the fused ops
- ``lowlight_fast.ops``: the fused ops; ``lowlight_fast.reference``: the plain-PyTorch originals
- ``lowlight_fast.compat``: modules named like the authors' files; ``accelerate(module)``
"""
from lowlight_fast import _ext
from lowlight_fast.backend import use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "accelerate", "build_info", "use_backend"]

build_info = _ext.build_info


def __getattr__(name):
    if name == "accelerate":  # imported lazily: it pulls in the models, losses and ops
        from lowlight_fast.compat.accelerate import accelerate

        return accelerate
    raise AttributeError(f"module 'lowlight_fast' has no attribute {name!r}")
