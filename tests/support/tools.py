"""Programs a test needs are made present (scripts/setup installs them), never skipped for."""

from __future__ import annotations

import shutil
import subprocess

from tests.support.network import REPO


def make_present(*commands: str) -> None:
    """Run scripts/setup once if any of `commands` is missing; fail if it still is."""
    if any(shutil.which(command) is None for command in commands):
        subprocess.run([str(REPO / "scripts" / "setup")], check=True)
    missing = [command for command in commands if shutil.which(command) is None]
    assert not missing, f"scripts/setup did not install {missing}"
