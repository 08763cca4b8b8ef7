"""TF4CTR's head op by op: the fused head's (tf4ctr_fast.ops.twin_head) parity target and its fallback."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .loss import total_loss


def reference_head(h_s: Tensor, h_c: Tensor, head_s: nn.Linear, head_c: nn.Linear, dfm: nn.Module,
                   y: Optional[Tensor], alpha: float, c: float, gamma: float,
                   twin_focus: bool = True) -> dict[str, Tensor]:
    """Auxiliary logits z_s, z_c, DFM fusion and (with labels) the loss, op by op: the fused head's
    parity target."""
    z_s = head_s(h_s).squeeze(-1)
    z_c = head_c(h_c).squeeze(-1)
    out = {"logit": dfm(h_s, h_c, z_s, z_c), "z_s": z_s, "z_c": z_c}
    if y is not None:
        out["loss"] = total_loss(out["logit"], z_s, z_c, y, alpha, c, gamma, twin_focus=twin_focus)
    return out
