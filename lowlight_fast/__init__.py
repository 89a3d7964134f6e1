"""lowlight_fast: fast, checkpoint-compatible Zero-DCE, Zero-DCE++ and SCI for PyTorch."""
from lowlight_fast import _ext
from lowlight_fast.backend import use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "use_backend", "build_info"]

build_info = _ext.build_info
