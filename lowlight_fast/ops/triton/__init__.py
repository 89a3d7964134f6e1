"""Triton kernels and their launchers, one module per op module of lowlight_fast.ops (GPU; CPU tensors
with TRITON_INTERPRET=1). They import torch, triton and lowlight_fast.backend only; the ops are
defined from the launchers in lowlight_fast/ops/<op>.py, which imports these modules on the first use
of the triton backend (:func:`lowlight_fast.ops._registry.use_triton`): importing triton takes seconds."""
