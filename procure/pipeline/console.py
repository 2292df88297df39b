"""What ``procure run`` shows: one status line per phase and progress bars on the terminal; everything the
libraries print (vLLM, transformers, torch, accelerate, peft, datasets: Python logging, warnings and C-level
prints alike) goes to ``run.log`` in the run directory instead, and also to the terminal with ``--verbose``.

:func:`capture` does the routing for one CLI run: file descriptors 1 and 2 point at the log (a temporary file
until the run directory is opened, then ``run.log``, see :func:`attach`), and :func:`status` / :func:`bar`
write to duplicates of the terminal's stdout and stderr taken before. Without :func:`capture` (library use,
tests) status lines go to ``sys.stdout`` and bars to ``sys.stderr`` as usual. Only the main process of an
``accelerate launch`` prints status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: loggers whose INFO records are kept in run.log (the rest of the root logger stays at WARNING)
LIBRARY_LOGGERS = ("vllm", "transformers", "torch", "accelerate", "peft", "datasets", "procure")
LOG_NAME = "run.log"


class _Capture:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        fd, name = tempfile.mkstemp(prefix="procure-run-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.attached = False
        self.term: IO[str] | None = None  # the terminal's stderr (progress bars)
        self.term_out: IO[str] | None = None  # the terminal's stdout (status lines)
        self.saved: dict[int, int] = {}
        self.handlers: list[tuple[str, logging.Handler]] = []
        self.levels: dict[str, int] = {}

    # -- routing ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._set_library_env()
        self._point_logging(self.log_path)
        if self.verbose:
            return
        _flush_std()
        self.term = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        self.term_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        for fd in (1, 2):
            self.saved[fd] = os.dup(fd)
        self._point_fds(self.log_path)
        logging.captureWarnings(True)

    def move_to(self, run_dir: Path) -> None:
        """Continue the log in ``run_dir/run.log`` (what was logged so far is appended there first)."""
        if self.attached:
            return
        target = Path(run_dir) / LOG_NAME
        _flush_std()
        with target.open("ab") as out, self.log_path.open("rb") as src:
            shutil.copyfileobj(src, out)
        old, self.log_path, self.attached = self.log_path, target, True
        self._point_logging(target)
        if not self.verbose:
            self._point_fds(target)
        old.unlink(missing_ok=True)

    def stop(self) -> None:
        _flush_std()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved = {}
        for t in (self.term, self.term_out):
            if t is not None:
                t.close()
        self.term = self.term_out = None
        if not self.verbose:
            logging.captureWarnings(False)
        self._drop_handler()
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        if not self.attached:
            self.log_path.unlink(missing_ok=True)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _point_fds(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def _point_logging(self, path: Path) -> None:
        """A file handler on the root logger (vLLM logs through it: ``VLLM_CONFIGURE_LOGGING=0``); with
        ``--verbose`` also on transformers' own logger and a terminal handler on the root."""
        self._drop_handler()
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.handlers = [(name, logging.FileHandler(path, encoding="utf-8")) for name in self._file_loggers()]
        if self.verbose:
            self.handlers.append(("", logging.StreamHandler(sys.stderr)))
        for name, h in self.handlers:
            h.setFormatter(fmt)
            h.setLevel(logging.INFO)
            logging.getLogger(name).addHandler(h)
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            if name != "transformers" and name not in self.levels and lg.level == logging.NOTSET:
                self.levels[name] = lg.level
                lg.setLevel(logging.INFO)

    def _file_loggers(self) -> list[str]:
        # without --verbose transformers' own stderr handler already writes into the log (fd 2)
        return ["", "transformers"] if self.verbose else [""]

    def _drop_handler(self) -> None:
        for name, h in self.handlers:
            logging.getLogger(name).removeHandler(h)
            h.close()
        self.handlers = []

    def _set_library_env(self) -> None:
        """Settings the libraries read when imported: vLLM logs through Python logging; no download bars."""
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM's records propagate to our handlers
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        if not self.verbose:
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


_CAPTURE: _Capture | None = None


@contextlib.contextmanager
def capture(verbose: bool = False) -> Iterator[_Capture]:
    """Route the libraries' output to the run's log for the duration of a CLI run (see the module docstring)."""
    global _CAPTURE
    cap = _Capture(verbose)
    cap.start()
    _CAPTURE = cap
    try:
        yield cap
    finally:
        _CAPTURE = None
        cap.stop()


def attach(run_dir: Path) -> None:
    """The run directory is open: the log continues in ``run_dir/run.log`` (no-op outside :func:`capture`)."""
    if _CAPTURE is not None:
        _CAPTURE.move_to(Path(run_dir))


def log_path() -> Path | None:
    """Where library output goes now (None outside :func:`capture`)."""
    return None if _CAPTURE is None else _CAPTURE.log_path


def stream() -> IO[str]:
    """The terminal's stderr as it was before :func:`capture` (progress bars)."""
    if _CAPTURE is not None and _CAPTURE.term is not None:
        return _CAPTURE.term
    return sys.stderr


def out_stream() -> IO[str]:
    """The terminal's stdout as it was before :func:`capture` (status lines)."""
    if _CAPTURE is not None and _CAPTURE.term_out is not None:
        return _CAPTURE.term_out
    return sys.stdout


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def status(message: str) -> None:
    """One status line on the terminal's stdout (``procure: <message>``); also kept in the log."""
    if not _is_main():
        return
    print(f"procure: {message}", file=out_stream(), flush=True)
    if _CAPTURE is not None and _CAPTURE.term is not None:
        logging.getLogger("procure").info(message)


def bar(iterable: Any = None, *, enabled: bool = True, **kw: Any):
    """A tqdm progress bar on the terminal (disabled when not ``enabled`` or not the main process)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, file=stream(), disable=not (enabled and _is_main()), dynamic_ncols=True, **kw)


def bars_open() -> int:
    """How many progress bars are showing now (a stage's own bar is shown only when no other is, i.e. for the
    warm-up stage; inside a round the coalition bar says enough)."""
    from tqdm.std import tqdm

    return sum(1 for b in list(getattr(tqdm, "_instances", ())) if not getattr(b, "disable", True))


def _flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
