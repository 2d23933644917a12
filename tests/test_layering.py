"""The package's imports run one way: no module imports from a stage above its own (lazy imports
inside functions included), in the order of docs/design.md."""

import ast
from pathlib import Path

import fastshower

STAGES = ["shared", "geometry", "simulation", "data", "validation", "models", "training",
          "inference", "cli"]
SHARED = {"__init__", "__version__", "errors", "simhits", "progress", "cluster"}  # below all
TOP = {"cli", "__main__", "demo"}


def stage(module: str) -> int:
    """Stage index of a module name ``fastshower.a.b`` (or of a file's dotted path)."""
    parts = module.split(".")[1:] or ["__init__"]
    head = parts[0]
    if head in SHARED:
        return 0
    if head in TOP:
        return STAGES.index("cli")
    return STAGES.index(head)


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every fastshower import in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fastshower")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "fastshower":  # from fastshower import geometry, __version__, ...
                out += [(node.lineno, f"fastshower.{a.name}") for a in node.names]
            elif name.startswith("fastshower"):
                out.append((node.lineno, name))
    return out


def test_no_module_imports_from_a_higher_stage():
    root = Path(fastshower.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for line, target in imports(path, package):
            if stage(target) > stage(module):
                bad.append(f"{path.relative_to(root)}:{line} ({STAGES[stage(module)]}) imports "
                           f"{target} ({STAGES[stage(target)]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from fastshower.inference.generate import Generator\n")
    assert imports(f, "fastshower.geometry") == [(2, "fastshower.inference.generate")]
    assert stage("fastshower.inference.generate") > stage("fastshower.geometry.detector")
