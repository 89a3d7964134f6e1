"""SCI's ``model.py``: ``EnhanceNetwork``, ``CalibrateNetwork``, ``Network(stage=3)``, ``Finetunemodel(weights)``."""
from lowlight_fast.models.sci import CalibrateNetwork, EnhanceNetwork, SCIFinetune, SCINetwork


class Network(SCINetwork):
    """``Network(stage=3)``: forward -> (illu_list, ref_list, input_list, att_list); ``_loss(input)``."""

    check_range = False  # as the original: no extra pass over the input (EnhancementModel)

    def __init__(self, stage: int = 3) -> None:
        super().__init__(stage=stage)


class Finetunemodel(SCIFinetune):
    """``Finetunemodel(weights)``: loads ``weights`` (a path), forward -> (illumination, reflectance).

    Unlike the original, the checkpoint is read with ``map_location="cpu"`` and ``weights_only=True``,
    so GPU-saved weights load on a CPU-only machine.
    """

    check_range = False  # as the original: no extra pass over the input (EnhancementModel)

    def __init__(self, weights) -> None:
        super().__init__(weights=weights)


__all__ = ["CalibrateNetwork", "EnhanceNetwork", "Finetunemodel", "Network"]
