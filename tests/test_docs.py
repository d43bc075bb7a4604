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


# Which parts of lookalike each part may import (docs/ARCHITECTURE.md): nothing imports upwards.
ALLOWED_IMPORTS = {
    "features": set(),
    "errors": set(),
    "locks": {"errors"},
    "decode": {"errors"},
    "models": {"errors"},
    "thumbnails": {"decode"},
    "engines": {"features", "models", "decode", "errors", "thumbnails"},
    "store": {"features", "errors", "locks"},
    "indexes": {"features", "errors", "locks"},
    "indexes.manager": {"indexes", "store"},
    "library": {
        "features",
        "decode",
        "engines",
        "errors",
        "indexes",
        "indexes.manager",
        "locks",
        "store",
        "thumbnails",
    },
    "catalog": {"errors", "library", "store", "thumbnails"},
    "background": {"engines", "errors", "library", "store"},
    "fusion": {"indexes"},
    "gateway": {"errors", "fusion", "indexes", "library"},
    "duplicates": {"engines", "errors", "fusion", "indexes", "library"},
    "config": {"engines", "indexes"},
    "service": {
        "background",
        "catalog",
        "config",
        "decode",
        "duplicates",
        "engines",
        "errors",
        "fusion",
        "gateway",
        "indexes",
        "library",
        "store",
    },
    "cli": {
        "catalog",
        "config",
        "duplicates",
        "errors",
        "fusion",
        "gateway",
        "indexer",
        "indexes",
        "library",
        "models",
        "service",
    },
    "indexer": {"errors", "library", "store", "worker", "ray_workers"},
    "ray_workers": {"worker"},
    "worker": {"decode", "engines", "errors", "models", "thumbnails"},
    "__main__": {"cli"},
}


def part_of(module: str) -> str:
    """The part a dotted module name (below lookalike) belongs to: indexes.manager stands apart."""
    return "indexes.manager" if module.startswith("indexes.manager") else module.split(".")[0]


def test_imports_go_one_way():
    import ast

    source = ROOT / "src" / "lookalike"
    for path in sorted(source.rglob("*.py")):
        module = ".".join(path.relative_to(source).with_suffix("").parts).removesuffix(".__init__")
        if module == "__init__":
            continue
        package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                names = [node.module] if node.module else [alias.name for alias in node.names]
                targets = [".".join([*base, name]) for name in names]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                targets = [n.removeprefix("lookalike.") for n in names if n and n.startswith("lookalike.")]
            else:
                continue
            for target in targets:
                mine, theirs = part_of(module), part_of(target)
                if theirs != mine:
                    assert theirs in ALLOWED_IMPORTS[mine], f"{module} imports {target}: {mine} may not import {theirs}"
