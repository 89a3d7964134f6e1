"""The fused ops. Each module: input checks, backend choice, fake impl, autograd.

Importing this package registers the fake implementations and autograd formulas of every op, so
``torch.ops.lowlight_fast.*`` called directly is differentiable and traceable too. The functions
here pick the backend with :func:`lowlight_fast.backend.select`.
"""
from lowlight_fast.ops import le_curve, smooth_loss, tv_loss, zerodce_losses  # noqa: F401  (registration)
