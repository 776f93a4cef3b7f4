"""metalib.exercises.check, and every notebook ending with 2-4 checkable exercises that are open when committed."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from metalib.exercises import check
from metalib.runner import discover_notebooks, find_project

NOTEBOOKS = discover_notebooks(find_project(Path(__file__).parent).notebooks_dir)
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d)["']""")


def test_check_reports_open_correct_wrong_and_error_without_raising(capsys):
    assert check("00.1", None, lambda a: a == 3, hint="three").status == "open"
    assert "open" in capsys.readouterr().out
    ok = check("00.1", 3, lambda a: a == 3, hint="three")
    assert ok and ok.status == "correct" and "correct" in capsys.readouterr().out
    wrong = check("00.1", 4, lambda a: (a == 3, f"{a} is too large"), hint="three")
    assert not wrong and wrong.status == "wrong"
    out = capsys.readouterr().out
    assert "4 is too large" in out and "Hint: three" in out
    broken = check("00.1", "x", lambda a: a + 1 > 0, hint="a number")
    assert broken.status == "error" and "TypeError" in broken.message and "Hint: a number" in broken.message
    assert "TypeError" in capsys.readouterr().out
    assert check("00.1", 3, lambda a: a == 3, quiet=True) and capsys.readouterr().out == ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_ends_with_open_checkable_exercises(path: Path):
    cells = nbformat.read(path, as_version=4).cells
    heads = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.lstrip().startswith("## Exercises")]
    assert len(heads) == 1, f"{path.name}: needs one '## Exercises' section"
    section = cells[heads[0]:]
    ids = [m for c in section if c.cell_type == "code" for m in CHECK_CALL.findall(c.source)]
    number = path.name[:2]
    assert 2 <= len(ids) <= 4 and len(set(ids)) == len(ids), f"{path.name}: 2-4 distinct exercises, got {ids}"
    assert all(i.startswith(number + ".") for i in ids), f"{path.name}: exercise ids must start with {number}., got {ids}"
    hints = sum(c.source.count("<details>") for c in section if c.cell_type == "markdown")
    assert hints >= len(ids), f"{path.name}: every exercise needs a hint in a <details> block"
    for c in section:
        if c.cell_type == "code" and "check(" in c.source:
            assert re.search(r"^\w+ = None\b", c.source, re.M), \
                f"{path.name}: an exercise cell must be committed unanswered (`answer = None`):\n{c.source}"


def test_exercise_tests_take_the_notebooks_objects_as_arguments():
    """The tests live in metalib.exercises.notebookNN and get what they need by keyword: they can be run outside
    the notebook, on objects built here."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from metalib.exercises import notebook00, notebook05, notebook06, notebook07
    from metalib.models import conv4
    from reference import omniglot_like_batch

    assert check("00.1", "mfltl", notebook00.verify_00_1, quiet=True) and not check("00.1", "MMMMM", notebook00.verify_00_1, quiet=True)
    assert check("05.2", "b, f", notebook05.verify_05_2, quiet=True) and not check("05.2", "ab", notebook05.verify_05_2, quiet=True)

    def grouped(x, w, b):  # [B, n, C, H, W] -> [B, n, O, H, W] in one grouped convolution
        B, n, C, H, W = x.shape
        out = F.conv2d(x.permute(1, 0, 2, 3, 4).reshape(n, B * C, H, W), w.reshape(-1, C, 3, 3), b.reshape(-1),
                       padding=1, groups=B)
        return out.view(n, B, -1, H, W).permute(1, 0, 2, 3, 4)
    assert check("06.2", grouped, notebook06.verify_06_2, quiet=True)
    assert not check("06.2", lambda x, w, b: torch.zeros(1), notebook06.verify_06_2, quiet=True)
    engines = {("conv4", "cpu"): "threads", ("conv4", "cuda"): "batched", ("mlp", "cpu"): "loop",
               ("plain", "cpu"): "loop", ("plain", "cuda"): "vmap"}
    assert check("06.1", engines, notebook06.verify_06_1, quiet=True).status in ("correct", "wrong")
    model, batch = conv4(5, hidden=4), omniglot_like_batch(tasks=3)
    assert check("06.3", (3 * 3 * 4, 3 * 4), notebook06.verify_06_3, model=model, batch=batch, quiet=True)
    assert not check("06.3", (1, 1), notebook06.verify_06_3, model=model, batch=batch, quiet=True)
    memory = pd.DataFrame({"inner steps": [1, 1, 4, 4], "method": ["MAML", "iMAML"] * 2, "graph MiB": [3, 2, 9, 3]})
    assert check("07.2", 4, notebook07.verify_07_2, memory=memory, quiet=True)
    assert not check("07.2", 1, notebook07.verify_07_2, memory=memory, quiet=True)


def test_notebook09_exercises_accept_the_right_answers():
    import torch

    from metalib.data import ClassSplit, ImagePreprocess
    from metalib.exercises import notebook09

    split = ClassSplit("train", torch.randint(0, 256, (9, 3, 4, 4), dtype=torch.uint8), ["a", "b", "c"],
                       counts=[2, 3, 4])
    assert check("09.1", 2, notebook09.verify_09_1, split=split, shots=1, queries=2, quiet=True)
    assert not check("09.1", 3, notebook09.verify_09_1, split=split, shots=1, queries=2, quiet=True)
    pre = ImagePreprocess(4, 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))

    def to_input(image, p):
        return (image.float() / 255 - torch.tensor(p.mean).view(-1, 1, 1)) / torch.tensor(p.std).view(-1, 1, 1)
    assert check("09.2", to_input, notebook09.verify_09_2, split=split, preprocess=pre, quiet=True)
    assert not check("09.2", lambda image, p: image.float() / 255, notebook09.verify_09_2, split=split,
                     preprocess=pre, quiet=True)
    assert check("09.3", "bce", notebook09.verify_09_3, quiet=True)
    assert not check("09.3", "bc", notebook09.verify_09_3, quiet=True)
