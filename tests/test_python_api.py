"""docs/python-api.md's loop and its loading block run as written."""
import os
import re

from tests.helpers import REPO


def _blocks() -> list[str]:
    text = (REPO / "docs" / "python-api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text.split("## The shortest loop", 1)[1], flags=re.S)


def test_the_documented_loop_trains_and_its_checkpoint_loads(tmp_path, capsys):
    loop, load = _blocks()[:2]
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        trained = {}
        exec(compile(loop, "python-api.md", "exec"), trained)
        loaded = dict(trained)  # the same session: its imports
        exec(compile(load, "python-api.md (loading)", "exec"), loaded)
    finally:
        os.chdir(here)
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if line.startswith("epoch")]
    assert [line.split(":")[0] for line in lines] == ["epoch 0 (STD)", "epoch 1 (CSG)", "epoch 2 (STD)", "epoch 3 (CSG)"]
    accuracy = float(lines[-1].split("test accuracy ")[1].split(",")[0])
    assert accuracy > 0.3, lines  # ten classes: chance is 0.1
    density = float(lines[-1].rsplit(" ", 1)[1])
    assert density < 1.0  # the CSG epochs moved G off all-ones
    x = trained["images"][1400:1408]
    assert (loaded["model"].eval()(x) == trained["model"](x)).all()
    assert (loaded["gate"].weight == trained["gate"].weight).all()
