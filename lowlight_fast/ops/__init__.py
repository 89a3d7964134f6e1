"""The fused ops. Each module, in one order: constants, input checks, the public function(s) (which
pick the backend with :func:`lowlight_fast.backend.select`), fake implementations, autograd, the
Triton registration; ``_registry`` registers them all the same way.

Importing this package registers the fake implementations and autograd formulas of every C++ op, so
``torch.ops.lowlight_fast.*`` called directly is differentiable and traceable too. The Triton ops
(``torch.ops.lowlight_fast.*_triton``) are defined on the first use of the triton backend
(:func:`lowlight_fast.ops._registry.use_triton`), as importing triton takes seconds.
"""
from lowlight_fast.ops import batch_norm_relu, conv3x3, deflate, le_curve, quantize, smooth_loss, tv_loss, zerodce_losses  # noqa: F401  (registration)
