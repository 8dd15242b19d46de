"""The shape of ploopfs/cli/ (docs/architecture.md, Front ends): one module per command or group
with register(sub), listed once in COMMANDS; the modules share only ploopfs.cli.common, so
there is no import cycle among them; building the parser imports no service, so `--help` and
every command's start stay fast."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from ploopfs import cli

CLI = Path(cli.__file__).parent
SHARED = {"__init__", "common"}


def _cli_imports(path: Path) -> set[str]:
    """The ploopfs.cli modules a file imports, anywhere in it (functions included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ploopfs.cli":
                out |= {f"ploopfs.cli.{a.name}" for a in node.names}
            elif node.module.startswith("ploopfs.cli."):
                out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.add(f"relative import in {path.name}")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ploopfs.cli")}
    return out


def test_every_command_module_is_listed_once() -> None:
    modules = sorted(p.stem for p in CLI.glob("*.py") if p.stem not in SHARED)
    assert sorted(cli.COMMANDS) == modules
    for name in cli.COMMANDS:
        assert callable(importlib.import_module(f"ploopfs.cli.{name}").register)


def test_modules_share_only_common() -> None:
    bad = {}
    for p in sorted(CLI.glob("*.py")):
        allowed = set() if p.stem == "common" else {"ploopfs.cli.common"}
        extra = _cli_imports(p) - allowed
        if extra:
            bad[p.name] = sorted(extra)
    assert bad == {}, "cli modules may import ploopfs.cli.common only (no cycles)"


def test_building_the_parser_imports_no_service() -> None:
    code = ("import sys\n"
            "from ploopfs.cli import build_parser\n"
            "build_parser().format_help()\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('ploopfs.')"
            " or m.split('.')[0] in ('numpy', 'rich', 'json', 'lxml', 'pyfuse3'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    assert set(out) == {"ploopfs.errors", "ploopfs.cli",
                        *(f"ploopfs.cli.{m}" for m in ("common", *cli.COMMANDS))}, out
