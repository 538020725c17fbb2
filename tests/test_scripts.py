"""Every chapter script imports and answers --help (readers run them by name)."""
import importlib
from pathlib import Path

import pytest

from common.data import REPO_ROOT

SCRIPTS = sorted(p for p in REPO_ROOT.glob("ch*/*.py")
                 if p.name != "__init__.py" and "def main(" in p.read_text())


def test_there_are_scripts():
    assert len(SCRIPTS) > 40


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help(path: Path, capsys):
    module = importlib.import_module(f"{path.parent.name}.{path.stem}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
