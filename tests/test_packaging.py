"""The distribution installs one import package, `livefeed`, and nothing generic."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_only_the_livefeed_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("livefeed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"livefeed"}
    assert "livefeed/core/keys.py" in names and "livefeed/gateway/static/livefeed.js" in names
    # the checkout's shell scripts are not part of an installed package
    assert not [n for n in names if n.rsplit("/", 1)[-1] in ("test", "up", "bootstrap")]
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_cli_runs_beside_a_users_own_core_package(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text(
        "raise SystemExit('the user core was imported')\n")
    proc = subprocess.run([sys.executable, "-m", "livefeed.ops.cli", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "livefeed" in proc.stdout
