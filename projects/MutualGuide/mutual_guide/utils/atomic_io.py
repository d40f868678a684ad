"""
Writes that never leave a truncated file under a real name: the data goes to a temporary file in the same
folder (".<name>.<random>.tmp"), is flushed to disk, and replaces the target with os.replace, which is atomic
on POSIX and Windows. A process killed mid-write leaves the previous file (or none) and a temporary file,
removed by `remove_stale_temporaries` when the next run starts.

Used by the checkpointer (checkpoints and `last_checkpoint`, through `AtomicWritePathManager`) and by
`AtomicJSONWriter` (metrics.json).
"""
import glob
import logging
import os
import tempfile

from detectron2.utils.events import JSONWriter

from mutual_guide.utils.detectron2_compat import init_json_writer

__all__ = ["AtomicFile", "AtomicJSONWriter", "AtomicWritePathManager", "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


class AtomicFile:
    """
    A file opened for writing ("w" or "wb") whose content appears under `path` only when it is closed
    without error. Use as a context manager, or call close() (commit) or discard().
    """

    def __init__(self, path, mode="wb"):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile writes whole files ('w' or 'wb'), not mode {mode!r}")
        self.path = path
        folder, name = os.path.split(os.path.abspath(path))
        fd, self.temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.chmod(self.temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; a checkpoint is as readable as any file
        self._file = os.fdopen(fd, mode)

    def write(self, data):
        return self._file.write(data)

    def flush(self):
        self._file.flush()

    def close(self):
        """Commit: the content goes to disk, then replaces `path`."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temporary, self.path)

    def discard(self):
        self._file.close()
        if os.path.exists(self.temporary):
            os.remove(self.temporary)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_atomically(path, data: bytes):
    with AtomicFile(path, "wb") as f:
        f.write(data)


class AtomicWritePathManager:
    """
    A detectron2/iopath PathManager whose open() for writing a local file gives an AtomicFile; everything
    else goes to the wrapped one. fvcore's Checkpointer writes checkpoints and `last_checkpoint` only through
    `self.path_manager.open(..., "wb" / "w")`, so wrapping its path manager is the smallest change that makes
    both writes atomic.
    """

    def __init__(self, inner):
        self._inner = inner

    def open(self, path, mode="r", **kwargs):
        if mode in ("w", "wb") and "://" not in str(path):
            return AtomicFile(path, mode)
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _AtomicAppendFile:
    """
    What JSONWriter writes metrics.json with: lines written are kept and, at each flush(), the whole file
    (what it held before plus every line since) replaces metrics.json atomically. A kill therefore never
    leaves half a line. It has no fileno(), so JSONWriter's os.fsync is skipped (AtomicFile syncs instead).
    """

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self._content = f.read()
        except FileNotFoundError:
            self._content = b""
        self._pending = []

    def write(self, text):
        self._pending.append(text)

    def flush(self):
        if self._pending:
            self._content += "".join(self._pending).encode()
            self._pending = []
            write_atomically(self.path, self._content)

    def close(self):
        self.flush()


class AtomicJSONWriter(JSONWriter):
    """detectron2's JSONWriter (same lines, appended to an existing metrics.json) with atomic writes."""

    def __init__(self, json_file, window_size=20):
        # not JSONWriter.__init__: it opens the file in append mode itself
        init_json_writer(self, _AtomicAppendFile(json_file), window_size)


def remove_stale_temporaries(folder):
    """Remove the temporary files that killed atomic writes left in `folder`; returns their paths."""
    patterns = (".model_*.pth.*.tmp", ".last_checkpoint.*.tmp", ".metrics.json.*.tmp")
    stale = sorted(p for pattern in patterns for p in glob.glob(os.path.join(folder, pattern)))
    for path in stale:
        os.remove(path)
    if stale:
        logger.info(f"Removed {len(stale)} temporary file(s) of interrupted writes: {', '.join(stale)}")
    return stale
