"""``Params``: parameters (and their gradients) as explicit dicts of tensors, the currency of the inner loop."""
from __future__ import annotations

from torch import Tensor

__all__ = ["Params"]

Params = dict[str, Tensor]  # name -> tensor (shared [*shape] or per task [B, *shape]); gradients use the same shape
