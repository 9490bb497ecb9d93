"""The README's Python example runs as written (it is what users copy first)."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    scope = {}
    with np.errstate(under="ignore"):
        exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102
    ds = scope["ds"]
    assert ds["f_n"].dims == ("n", "seed", "t", "x")
    # the example trains: the mean loss falls between the first and last save time
    loss = ds["loss"].mean("seed").values
    assert np.all(loss[:, -1] < loss[:, 0])
