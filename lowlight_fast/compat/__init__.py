"""Modules named like the authors' files, for a one-import switch (see README, "Switching from the
original code"):

- ``from lowlight_fast.compat.zerodce import model, Myloss``      (Zero-DCE: model.py, Myloss.py)
- ``from lowlight_fast.compat.zerodcepp import model, Myloss``    (Zero-DCE++)
- ``from lowlight_fast.compat.sci import model, loss``            (SCI: model.py, loss.py)

Same class names, constructor arguments, call signatures, return values and state_dict keys as the
originals; no CUDA requirement. :func:`accelerate` switches instances of the authors' own classes.
"""
from lowlight_fast.compat.accelerate import accelerate

__all__ = ["accelerate"]
