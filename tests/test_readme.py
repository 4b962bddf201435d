"""The README's Python example runs as written."""

import re
from pathlib import Path


def test_readme_python_example_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    scope: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["result"].unit_labels[scope["gen"].planted_units["door"]] == "door"  # type: ignore[attr-defined]
    assert scope["effect"].effect.relative < -0.99  # type: ignore[attr-defined]
