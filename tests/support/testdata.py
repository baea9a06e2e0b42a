"""Where the real directory documents live: `shared/testdata/real-directory/` beside the checkout."""

import functools
import os
from pathlib import Path

from oppy.netdoc.documents import parse_consensus, parse_microdescriptors
from oppy.netdoc.netdir import NetDir

REPO = Path(__file__).resolve().parents[2]
REAL_DIRECTORY = Path(os.environ.get("OPPY_REAL_DIRECTORY",
                                     REPO.parent / "shared" / "testdata" / "real-directory"))
if not REAL_DIRECTORY.is_dir():
    raise RuntimeError(f"the real directory documents are missing: {REAL_DIRECTORY} "
                       "(set OPPY_REAL_DIRECTORY to their folder)")


@functools.cache
def real_netdir(folder: str) -> NetDir:
    """The consensus of ``REAL_DIRECTORY/folder`` with the microdescriptors its cache files hold for it."""
    directory = REAL_DIRECTORY / folder
    consensus = parse_consensus((directory / "cached-microdesc-consensus").read_bytes())
    wanted = consensus.microdesc_digests()
    microdescs = {}
    for path in sorted(directory.glob("cached-microdescs*")):
        microdescs.update(parse_microdescriptors(path.read_bytes(), wanted).microdescs)
    return NetDir(consensus, microdescs)
