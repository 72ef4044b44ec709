"""Every public module, class, function and method of the package says what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

from servers import ROOT

PACKAGE = ROOT / "softfactory_obs"


def undocumented(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    missing = [] if ast.get_docstring(tree) else ["module"]
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        if not ast.get_docstring(node):
            missing.append(f"{node.name} (line {node.lineno})")
        if isinstance(node, ast.ClassDef):
            missing += [
                f"{node.name}.{sub.name} (line {sub.lineno})"
                for sub in node.body
                if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_") and not ast.get_docstring(sub)
            ]
    return missing


def test_every_public_name_has_a_docstring() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30  # the control: the package was found and read
    missing = {str(f.relative_to(ROOT)): m for f in files if (m := undocumented(f))}
    assert not missing, missing


def test_the_check_sees_a_missing_docstring(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Doc."""\n\ndef public():\n    pass\n\nclass Thing:\n    """Doc."""\n\n    def act(self):\n        pass\n'
    )
    assert undocumented(sample) == ["public (line 3)", "Thing.act (line 9)"]
