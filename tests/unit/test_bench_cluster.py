"""The bench starts workers from the repository; a variant's PYTHONPATH must still win."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.cluster import PYTHON
from bench.environment import REPO_ROOT


def test_workers_import_tender_from_pythonpath_not_from_the_working_directory(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other-checkout"
    (other / "workers").mkdir(parents=True)
    (other / "workers" / "__init__.py").write_text("")
    env = os.environ | {"PYTHONPATH": str(other)}

    imported = subprocess.run(
        [*PYTHON, "-c", "import workers; print(workers.__file__)"],
        cwd=REPO_ROOT,  # where bench.cluster starts its workers
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert Path(imported) == other / "workers" / "__init__.py"
