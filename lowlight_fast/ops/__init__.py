"""The fused ops. Each module: input checks, backend choice, fake impl, autograd.

Ops are reached through ``torch.ops.lowlight_fast`` (compiled) or the Triton wrappers; the
functions here pick the backend with :func:`lowlight_fast.backend.select`.
"""
