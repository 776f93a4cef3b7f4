"""metalib installs and imports anywhere: a wheel in a fresh virtual environment holding only torch and the
declared dependencies runs cells copied from the notebooks, from a folder outside the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Cells as a user copies them: notebook 02's episode sampling, notebook 04's short MAML meta-train and
# evaluate (quick-profile sizes), and the zoo. Device, seed and paths are passed in explicitly.
SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from metalib import (EpisodeSampler, conv4, evaluate, make_learner, make_optimizer, meta_train, omniglot_splits,
                         pretrained, setup)

    device = setup(seed=0, device="cpu", cpu_threads=1)
    splits = omniglot_splits("vinyals")                                   # notebook 02
    train_tasks = EpisodeSampler(splits["train"], 5, 1, 2, seed=0, device=device)
    episode = train_tasks.task(0)
    print("episode", tuple(episode.support_x.shape), tuple(episode.query_x.shape))

    train_sampler = EpisodeSampler(splits["train"], 5, 1, 1, seed=0, device=device)   # notebook 04
    test_sampler = EpisodeSampler(splits["test"], 5, 1, 5, seed=1, device=device)
    learner = make_learner("maml", conv4(5, hidden=16, seed=0, device=device), inner_lr=0.4, inner_steps=1)
    history = meta_train(learner, train_sampler, steps=5, meta_batch=4, optimizer=make_optimizer(learner, lr=1e-3),
                         progress=False, checkpoint="runs/maml.pt")
    result = evaluate(learner, test_sampler, n_tasks=20, steps=3)
    print("maml", result)
    print("zoo", pretrained.available())
    from metalib.data import published_split
    print("cub split", [len(v) for v in published_split("cub").values()])
    try:
        import metalib.viz
    except ImportError as exc:
        print("viz:", exc)
    print("matplotlib loaded:", "matplotlib" in sys.modules)
''')


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_copied_cells(tmp_path):
    data = os.environ.get("METALIB_DATA_DIR")
    if not data:
        pytest.skip("needs METALIB_DATA_DIR (the shared Omniglot copy)")
    dist, venv, work, src = tmp_path / "dist", tmp_path / "venv", tmp_path / "project", tmp_path / "src"
    # build from a copy of the tracked files: a build inside the checkout would leave build/ there
    files = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    for model in (ROOT / "metalib" / "pretrained").glob("*.*"):  # shipped models not committed yet, if any
        shutil.copy2(model, src / "metalib" / "pretrained" / model.name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)])
    wheel = next(dist.glob("metalib-*.whl"))
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    torch_pin = next(l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("torch=="))
    _run([str(py), "-m", "pip", "install", "--quiet", torch_pin])  # the CPU build first, as README says
    _run([str(py), "-m", "pip", "install", "--quiet", str(wheel)])
    installed = _run([str(py), "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    assert "matplotlib" not in installed and "papermill" not in installed  # only the core set

    work.mkdir()
    (work / "cells.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METALIB_CACHE_DIR")}
    env.update(METALIB_DATA_DIR=str(Path(data).resolve()), XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = _run([str(py), "cells.py"], cwd=work, env=env).stdout
    assert "episode (1, 5, 1, 28, 28) (1, 10, 1, 28, 28)" in out
    assert "maml accuracy" in out and "(95% CI, 20 tasks, 3 test steps" in out
    assert "pip install 'metalib[notebooks]'" in out and "matplotlib loaded: False" in out
    from metalib.pretrained import available
    assert f"zoo {available()}" in out  # the zoo ships inside the wheel
    assert "cub split [100, 50, 50]" in out  # and so do the benchmarks' published splits
    # data caches go to the user cache folder, never next to site-packages; the run's files to the cwd
    assert (tmp_path / "cache" / "metalib" / "cache" / "omniglot28.pt").exists()
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not list((site / "metalib").rglob("*omniglot28*")) and not (site / "data").exists()
    assert (work / "runs" / "maml.pt").exists()
