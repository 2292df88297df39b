"""Where procure keeps converted models, downloaded data and other derived artefacts.

``$PROCURE_CACHE`` if set, else ``~/.cache/procure``. Nothing here is ever committed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) ``<cache root>/<parts...>``."""
    root = Path(os.environ.get("PROCURE_CACHE", Path.home() / ".cache" / "procure"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory ``target`` atomically: ``build(tmp)`` fills a sibling temp folder, then it is renamed.

    A crash mid-build leaves no half-written ``target``; a concurrent builder that loses the rename race
    discards its copy and uses the winner's.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
