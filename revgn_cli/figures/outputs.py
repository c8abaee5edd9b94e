"""Where ``plot`` / ``verify`` write, checked before any figure is drawn: one error line naming the fix instead of
a raw OSError, and never over figures made from another results dir.

Default folder: ``figures/`` for the default results dir (``results``); with ``--results DIR`` (or
``results_dir=DIR``) and no ``--out``, ``DIR/figures/`` — figures and claims.md stay beside the runs they were
made from.
"""
from __future__ import annotations

from pathlib import Path

FILE_FORMATS = (".png", ".pdf", ".svg")  # `plot runs --out FILE.<ext>`: that file in that format (PDF beside it)


def _error(msg: str) -> Exception:
    from revgn_cli.config import ConfigError

    return ConfigError(msg)


def default_out(results: str, results_given: bool, default: Path) -> Path:
    """``default`` (figures/) for the default results dir; ``<results>/figures`` for one given on the command line."""
    return Path(results).expanduser() / "figures" if results_given else default


def writable_dir(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written there; one line with the fix otherwise."""
    path = Path(path).expanduser()
    if path.suffix.lower() in FILE_FORMATS and not path.is_dir():
        raise _error(f"{flag} {path} names a file, but this writes several (figN.png and .pdf, claims.md): give a "
                     f"folder, e.g. {flag} {path.with_suffix('')}")
    if path.exists() and not path.is_dir():
        raise _error(f"{flag} {path} is an existing file, not a folder: give a folder (e.g. {flag} {path}_figures)")
    from revgn_cli.results.store import probe_writable  # stdlib-only at import: error paths stay fast

    try:
        probe_writable(path)
    except OSError as e:
        raise _error(f"cannot write into {path} ({e.strerror or e}): give {flag} DIR somewhere writable") from None
    return path


def file_target(path: Path, flag: str = "--out") -> tuple[Path, str, tuple[str, ...]]:
    """``plot runs --out``: a FILE.png|.pdf|.svg → (folder, stem, formats: that one and PDF); a folder → (it, '', ())."""
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext in FILE_FORMATS and not path.is_dir():
        writable_dir(path.parent, flag)
        if path.exists() and not path.is_file():
            raise _error(f"{flag} {path} exists and is not a file")
        return path.parent, path.stem, tuple(dict.fromkeys([ext[1:], "pdf"]))
    if path.exists() and not path.is_dir():
        raise _error(f"{flag} {path} is an existing file of another type: give FILE.png, FILE.pdf, FILE.svg or a "
                     "folder")
    if ext and ext not in FILE_FORMATS and not path.exists() and len(ext) <= 5 and ext[1:].isalpha():
        raise _error(f"{flag} {path}: {ext} is not a format plot writes (png, pdf, svg); give FILE.png or a folder")
    return writable_dir(path, flag), "", ()
