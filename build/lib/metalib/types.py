"""Type aliases shared across metalib: parameters and gradients as explicit dicts of tensors."""
from __future__ import annotations

from torch import Tensor

__all__ = ["Params", "Grads"]

Params = dict[str, Tensor]  # parameter name -> tensor (shared [*shape] or per task [B, *shape])
Grads = dict[str, Tensor]   # meta-parameter name -> its gradient
