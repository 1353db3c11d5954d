"""A digest of the code that ran, so a step is reused only when its code is unchanged.

Git commits miss uncommitted edits and do not exist inside an image built from a copy; the
package's own files are the truth in both cases.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pipeline

PACKAGE_ROOT = Path(pipeline.__file__).resolve().parent


@functools.cache
def code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
