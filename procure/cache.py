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


def write_dir_atomically(target: Path, build: Callable[[Path], None], *, replace: bool) -> Path:
    """Write directory ``target`` atomically: ``build(tmp)`` fills a sibling temp folder, which is then renamed.

    Readers never see a half-written ``target``, and a failure (in ``build`` or the rename) leaves no temp folder.

    - ``replace=False`` (create once): an existing ``target`` is returned as is, without calling ``build``; a
      concurrent builder that loses the rename race discards its copy and returns the winner's.
    - ``replace=True``: an existing ``target`` is swapped out only once the new folder is complete; until then,
      and on any failure, the old folder stays in place.
    """
    target = Path(target)
    if not replace and target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None  # holds the replaced folder (as old/x) until the new one is in place
    try:
        build(tmp)
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "x")
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:  # put the old folder back
                os.rename(old / "x", target)
            if replace or not target.exists():  # else: lost the race to a concurrent builder, use its folder
                raise
    finally:
        for d in (tmp, old):
            if d is not None and d.exists():
                shutil.rmtree(d, ignore_errors=True)
    return target


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory ``target`` with ``build(tmp)`` unless it exists: ``write_dir_atomically(replace=False)``."""
    return write_dir_atomically(target, build, replace=False)


def write_file_atomically(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a sibling temp file and a rename: readers see the old file or the whole
    new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left after a failure: the rename consumed it otherwise
    return path


def write_json_atomically(path: Path, obj: object, indent: int | None = 1) -> Path:
    """``obj`` as strict JSON (NaN and infinities as null) through :func:`write_file_atomically`."""
    import json
    import math

    def finite(x: object) -> object:
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        return None if isinstance(x, float) and not math.isfinite(x) else x

    return write_file_atomically(path, json.dumps(finite(obj), indent=indent, allow_nan=False) + "\n")


class OutputError(OSError):
    """Results could not be written to ``target``; they are complete in ``kept`` (a temporary folder)."""

    def __init__(self, target: Path, reason: str, kept: Path) -> None:
        super().__init__(f"cannot write {target} ({reason}); the results are in {kept}")
        self.target, self.reason, self.kept = target, reason, kept


def publish_files(build: Callable[[Path], None], out_dir: Path, *, what: str = "results") -> list[Path]:
    """Write result files so that a failure loses nothing and never leaves a half-written file.

    ``build(tmp)`` writes the files into a fresh folder in the system temp directory; each is then copied next
    to its target in ``out_dir`` and renamed over it (atomic per file). If ``out_dir`` cannot be written,
    :class:`OutputError` says so and keeps the temp folder, which holds every result. Returns the final paths.
    """
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"procure-{what}-"))
    build(tmp)
    done: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in tmp.iterdir() if p.is_file()):
            part = out_dir / f".{f.name}.part-{os.getpid()}"
            try:
                shutil.copyfile(f, part)
                os.replace(part, out_dir / f.name)
            finally:
                part.unlink(missing_ok=True)
            done.append(out_dir / f.name)
    except OSError as exc:
        raise OutputError(out_dir, exc.strerror or str(exc), tmp) from None
    shutil.rmtree(tmp, ignore_errors=True)
    return done
