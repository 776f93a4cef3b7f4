"""Shared fixtures. The real Omniglot copy is found via METALIB_DATA_DIR or ../shared/data."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _real_data_dir() -> Path | None:
    env = os.environ.get("METALIB_DATA_DIR")
    candidates = [Path(env).expanduser(), REPO_ROOT / env] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "omniglot").is_dir() or (c / "images_background.zip").is_file():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def omniglot_data_dir() -> Path:
    """Folder holding the real Omniglot copy; skips the test when there is none."""
    found = _real_data_dir()
    if found is None:
        pytest.skip("real Omniglot data not found: set METALIB_DATA_DIR or provide ../shared/data")
    return found


@pytest.fixture(scope="session")
def omniglot(omniglot_data_dir: Path):
    """All of Omniglot at 28x28, from the default cache (built once, in the git-ignored data/)."""
    from metalib.data import load_omniglot

    start = time.perf_counter()
    data = load_omniglot(omniglot_data_dir, download=False)
    print(f"\nload_omniglot (cache build or load): {time.perf_counter() - start:.2f} s")
    return data


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids oversubscription on busy machines (restored afterwards).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pattern_images():
    """``make(classes, seed) -> uint8 [classes, 20, 28, 28]``: each class a random binary pattern plus noise, an
    easily separable stand-in for Omniglot in learning tests."""
    import torch

    def make(classes: int = 30, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        protos = (torch.rand(classes, 1, 28, 28, generator=g) > 0.7).float()
        images = (protos[:, None] + 0.3 * torch.rand(classes, 20, 1, 28, 28, generator=g)).clamp(0, 1)
        return (images.squeeze(2) * 255).to(torch.uint8)
    return make


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for the test (gradient checks), restored after."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def two_or_more_threads():
    """The threads strategy spreads tasks over ``torch.get_num_threads()`` workers: make that >= 2 here."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(2, old))
    yield
    torch.set_num_threads(old)


class _FullDisk:
    """A file whose writes fail as on a full disk: half the bytes land, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        import errno

        self.f.write(bytes(data)[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every file metalib writes through :mod:`metalib.outputs` (checkpoints, CSVs, manifests, metrics) and the
    Omniglot cache hits a full disk mid-write."""
    import builtins

    import metalib.data.omniglot
    import metalib.outputs

    real_open, real_open_temp = builtins.open, metalib.data.omniglot.open_temp

    def open_temp(dest):
        f, tmp = real_open_temp(dest)
        return _FullDisk(f), tmp

    monkeypatch.setattr(metalib.outputs, "open", lambda *a, **k: _FullDisk(real_open(*a, **k)), raising=False)
    monkeypatch.setattr(metalib.data.omniglot, "open_temp", open_temp)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs) at ``tmp_path / "disk"``: writes past it fail as on a full disk, through
    every layer (torch's C++ writer included). Needs the right to mount (root); skips elsewhere."""
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = shutil.which("mount")
    if os.name != "posix" or os.geteuid() != 0 or mount is None or subprocess.run(
            [mount, "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("a small real filesystem needs mount rights (root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
