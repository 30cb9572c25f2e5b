"""CLI start-up: help, version and policy errors answer without importing torch (issue 23).

Each case runs the real ``eco-guard`` entry point in a fresh interpreter and then looks
at ``sys.modules``: importing torch and transformers costs seconds (far more on a busy
machine), and none of these answers needs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import eco_guard

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import sys\n"
    "from eco_guard.cli import run\n"
    "try:\n"
    "    code = run(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "heavy = sorted(m for m in ('torch', 'transformers', 'sklearn', 'onnxruntime') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _heavy(proc: subprocess.CompletedProcess[str]) -> str:
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")]
    assert line, proc.stderr
    return line[-1].removeprefix("HEAVY=")


@pytest.mark.parametrize("argv", [("--help",), ("fit", "--help"), ("--version",)])
def test_help_and_version_do_not_import_torch(argv: tuple[str, ...], tmp_path: Path) -> None:
    proc = _run(*argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _heavy(proc) == ""
    if argv == ("--version",):
        assert eco_guard.__version__ in proc.stdout


def test_policy_typo_fails_with_exit_2_before_torch(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\ntargts: []\n", encoding="utf-8")
    proc = _run("fit", "p.yaml", "--out", "g", cwd=tmp_path)
    assert proc.returncode == 2
    assert "targts" in proc.stderr and "did you mean 'targets'" in proc.stderr
    assert _heavy(proc) == ""
    assert not (tmp_path / "g").exists()
