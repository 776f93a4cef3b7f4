"""Shared fixtures. The real Omniglot copy is found via METALIB_DATA_DIR or ../shared/data."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from launch import WORKER, show, torchrun

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


@pytest.fixture(scope="session")
def omniglot_test_split(omniglot_data_dir: Path):
    """The Vinyals test split (rotations included), as evaluation draws from it."""
    from metalib.data import omniglot_splits

    return omniglot_splits("vinyals", splits=["test"], data_dir=omniglot_data_dir, download=False)["test"]


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


# ------------------------------------------------------------------ fixtures of single test modules


@pytest.fixture
def served(tmp_path: Path) -> tuple[str, bytes]:
    """A file:// URL and the bytes it serves."""
    payload = bytes(range(256)) * 1000
    src = tmp_path / "server" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(payload)
    return src.as_uri(), payload


@contextlib.contextmanager
def serve_folder(folder: Path):
    """The base URL of an HTTP server on the loopback address serving ``folder``, for the ``with`` block."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_folder(tmp_path: Path):
    """``(folder, base URL)``: an HTTP server on the loopback address serving ``folder`` (the downloads' tests)."""
    folder = tmp_path / "www"
    folder.mkdir()
    with serve_folder(folder) as url:
        yield folder, url


BOOK_NOTEBOOKS = ("00", "02")  # the book's tests build it from these two, the quickest to execute


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, omniglot_data_dir):
    """``(site, sources)``: the book built from notebooks 00 and 02 executed (quick profile) for this session."""
    pytest.importorskip("myst_nb", reason="the book's packages are in requirements.txt (metalib[book])")
    from metalib.runner import discover_notebooks, find_project, run_notebook, select_notebooks
    from metalib.runner.book import build_book, executed_sources

    project = find_project(REPO_ROOT)
    work = tmp_path_factory.mktemp("book")
    paths = select_notebooks(discover_notebooks(project.notebooks_dir), BOOK_NOTEBOOKS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("METALIB_DATA_DIR", str(omniglot_data_dir))  # the kernels' data
        for path in paths:
            result = run_notebook(path, work / "output" / "quick", profile="quick")
            assert result.ok, f"{path.name}: {result.error}"
    sources = executed_sources(paths, work / "output")
    site = build_book(sources, REPO_ROOT / "book", REPO_ROOT / "README.md", work / "book", log=lambda msg: None)
    return site, sources


@pytest.fixture(scope="session")
def book_url(built_book):
    """The built book served over HTTP on the loopback address (as a reader's browser would load it)."""
    with serve_folder(built_book[0]) as url:
        yield url


@pytest.fixture
def fake_counts(monkeypatch):
    """Make the loader expect the synthetic set's counts instead of 964 + 659 characters."""
    import metalib.data.omniglot as om

    monkeypatch.setattr(om, "_EXPECTED", {"background": (2, 3), "evaluation": (1, 2)})
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)


@pytest.fixture
def own_zoo(tmp_path, monkeypatch):
    """A copy of two shipped models in a zoo folder of the test's own."""
    import metalib.pretrained as zoo

    for name in ("maml-omniglot-5w1s", "fomaml-omniglot-5w1s"):
        for ext in (".pt", ".json"):
            shutil.copy(zoo.ZOO / f"{name}{ext}", tmp_path / f"{name}{ext}")
    monkeypatch.setattr(zoo, "ZOO", tmp_path)
    return tmp_path


@pytest.fixture
def close_figures(monkeypatch):
    """Figures closed after each test; the widgets' figure-mode rule at its default, whatever the shell says."""
    from metalib.viz import widgets
    import matplotlib.pyplot as plt

    monkeypatch.delenv(widgets.STATIC_ENV, raising=False)
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sinusoid_learners():
    """A MAML and a pre-trained learner on the sinusoid MLP (untrained)."""
    from metalib.algorithms import maml, pretrain
    from metalib.models import mlp

    return {"MAML": maml(mlp(seed=0), inner_lr=0.01, problem="regression"),
            "pretrained": pretrain(mlp(seed=1), problem="regression")}


class DisplayLog:
    """Stands in for IPython's ``display``: counts the figures displayed."""

    def __init__(self):
        self.figures = []

    def __call__(self, obj, **_):
        self.figures.append(obj)


@pytest.fixture
def displays(monkeypatch):
    """Stands in for the widgets' ``display``; the log of what they displayed."""
    from metalib.viz import widgets

    log = DisplayLog()
    monkeypatch.setattr(widgets, "display", log)
    return log


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> dict:
    """Every registered learner trained and evaluated by a 2-rank torchrun job (tests/test_distributed.py is the
    worker); each rank's results, checked to agree bitwise between the ranks."""
    import torch

    from metalib import REGISTRY
    CASES = sorted(REGISTRY)
    out = tmp_path_factory.mktemp("dist_equivalence")
    proc, seconds = torchrun([str(WORKER), "equivalence", str(out)])
    assert proc.returncode == 0, show(proc)
    print(f"\n2-rank torchrun of {len(CASES)} algorithms: {seconds:.1f} s")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name in CASES:  # every rank applied the same update: bitwise identical meta-parameters
        for k, v in ranks[0][name]["state"].items():
            assert torch.equal(v, ranks[1][name]["state"][k]), f"{name}: ranks disagree on {k}"
    assert ranks[0]["time_budget_stop"] == ranks[1]["time_budget_stop"] == 1
    return ranks[0]
