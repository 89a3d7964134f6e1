"""Zero-DCE++'s ``model.py``: ``enhance_net_nopool(scale_factor)`` and ``CSDN_Tem``."""
from lowlight_fast.models.zerodcepp import CSDN_Tem, ZeroDCEPlusPlus


class enhance_net_nopool(ZeroDCEPlusPlus):  # noqa: N801 - the original name
    """``enhance_net_nopool(scale_factor)``; ``forward(x)`` -> ``(enhance_image, x_r)``."""

    check_range = False  # as the original: no extra pass over the input (EnhancementModel)

    def __init__(self, scale_factor: int) -> None:
        super().__init__(scale_factor=scale_factor, fused=True)


__all__ = ["CSDN_Tem", "enhance_net_nopool"]
