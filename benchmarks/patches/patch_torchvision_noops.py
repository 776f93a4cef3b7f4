"""Make the PyPI torchvision 0.28.0 wheel importable next to the CPU-only torch 2.13.0 wheel.

The PyPI wheel is a CUDA build: ``torchvision/_C.so`` links ``libtorch_cuda.so``, which the CPU torch
wheel lacks, so torchvision's custom ops are not registered (torchvision tolerates that). But
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms``/``::qnms``
without checking ``extension._has_ops()``, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist``. This patch guards those two decorators.
learn2learn only needs torchvision to import (datasets/transforms); no MAML code path uses these ops.

Idempotent; run with the interpreter of the environment to patch.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

MARKER = "# metalib-benchmarks patch"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed", file=sys.stderr)
        return 1
    path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    src = path.read_text()
    n = 0
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")\n'
        new = (f'@(torch.library.register_fake("torchvision::{op}") '
               f'if torchvision.extension._has_ops() else (lambda f: f))  {MARKER}\n')
        if old in src:
            src = src.replace(old, new)
            n += 1
    if n:
        path.write_text(src)
    already = src.count(MARKER)
    print(f"torchvision patch: {n} decorator(s) patched now, {already} patched in total ({path})")
    return 0 if already == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
