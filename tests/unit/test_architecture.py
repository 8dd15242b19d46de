"""docs/architecture.md stays true: every module is named there, and every import goes to the
same layer or a lower one (format → volume → content → services → front ends)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "ploopfs"

# Lower number = lower layer. Shared modules (errors, the C wrappers) are below everything.
LAYERS = {"errors": 0, "native": 0, "_native": 0, "__init__": 0, "__main__": 5,
          "format": 1, "volume": 2, "content": 3, "services": 4, "fuse": 5, "cli": 5}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(rel: Path) -> int:
    head = rel.parts[0].removesuffix(".py")
    return LAYERS["cli" if head.startswith("cli") else head]


def test_every_module_is_named_in_architecture_md() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(PKG)) for p in _modules()
               if p.name != "__init__.py" or p.parent == PKG
               if str(p.relative_to(PKG)) not in doc and p.name not in ("__init__.py", "__main__.py")]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_imports_go_down_the_layers() -> None:
    bad = []
    for p in _modules():
        rel = p.relative_to(PKG)
        mine = _layer(rel)
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                parts = n.split(".")
                if parts[0] != "ploopfs" or len(parts) < 2:
                    continue
                if _layer(Path(parts[1])) > mine:
                    bad.append(f"{rel}: imports {n}")
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)
