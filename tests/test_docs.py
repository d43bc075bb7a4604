"""The docs keep up with the code: every setting and every engine is documented."""

from pathlib import Path

from lookalike.config import Settings
from lookalike.engines import ENGINES

ROOT = Path(__file__).parent.parent


def test_every_setting_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"LOOKALIKE_{name.upper()}" in readme, name


def test_every_engine_is_in_the_readme_and_the_architecture():
    readme = (ROOT / "README.md").read_text()
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for name, engine in ENGINES.items():
        assert f"`{name}`" in readme, name
        module = engine.__module__.rsplit(".", 1)[1]  # "global" is a Python keyword: global_features.py
        assert f"{module}.py" in architecture, name


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text().split("\n\n")[2]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
