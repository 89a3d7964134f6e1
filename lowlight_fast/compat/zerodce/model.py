"""Zero-DCE's ``model.py``: ``enhance_net_nopool()`` (fused curve, original state_dict keys)."""
from lowlight_fast.models.zerodce import ZeroDCE


class enhance_net_nopool(ZeroDCE):  # noqa: N801 - the original name
    """``enhance_net_nopool()``; ``forward(x)`` -> ``(enhance_image_1, enhance_image, r)``."""

    check_range = False  # as the original: no extra pass over the input (EnhancementModel)

    def __init__(self) -> None:
        super().__init__(fused=True)
