"""Where the real directory documents live: `shared/testdata/real-directory/` beside the checkout."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL_DIRECTORY = Path(os.environ.get("OPPY_REAL_DIRECTORY",
                                     REPO.parent / "shared" / "testdata" / "real-directory"))
if not REAL_DIRECTORY.is_dir():
    raise RuntimeError(f"the real directory documents are missing: {REAL_DIRECTORY} "
                       "(set OPPY_REAL_DIRECTORY to their folder)")
