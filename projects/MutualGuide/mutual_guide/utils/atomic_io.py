"""
Writes that never leave a truncated file under a real name: the data goes to a temporary file in the same
folder (".<name>.<random>.tmp"), is flushed to disk, and replaces the target with os.replace, which is atomic
on POSIX and Windows. A process killed mid-write leaves the previous file (or none) and a temporary file,
removed by `remove_stale_temporaries` when the next run starts.

Every file the project writes goes through this module: checkpoints and `last_checkpoint` (the checkpointer,
through `AtomicWritePathManager`), exports (`atomic_path`), the evaluation report and demo.py's drawings and
--json (`AtomicFile`, `write_atomically`); `refuse_to_replace` is the one rule for what may be written over. metrics.json
only ever grows: `AtomicJSONWriter` appends whole lines and cuts a torn last line when it opens the file.
"""
import contextlib
import glob
import logging
import os
import tempfile

from detectron2.utils.events import JSONWriter

from mutual_guide.utils.detectron2_compat import init_json_writer

__all__ = ["AtomicFile", "AtomicJSONWriter", "AtomicWritePathManager", "atomic_path", "refuse_to_replace", "remove_stale_temporaries", "write_atomically", "write_image"]

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


@contextlib.contextmanager
def atomic_path(path):
    """
    For writers that take a file name (torch.onnx.export, ScriptModule.save): yields a temporary name in the
    same folder, which replaces `path` only when the block ends without error; otherwise it is removed. An
    interrupted export therefore never leaves a truncated file under its final name.
    """
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def refuse_to_replace(paths, *, flag: str, allowed: bool = False, inputs=()):
    """
    The rule for every file a run writes: never over one of its `inputs` (images, annotation files, the config),
    and never over an existing file unless the user asked for exactly that with `flag` (`allowed`).
    Raises FileExistsError naming the path(s) and the flag; returns nothing when all may be written.
    """
    inputs = {os.path.realpath(p) for p in inputs}
    paths = list(paths)
    over_inputs = [p for p in paths if os.path.realpath(p) in inputs]
    if over_inputs:
        raise FileExistsError(
            f"{_listed(over_inputs)} would overwrite an input of this run: choose another output path"
        )
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not allowed:
        raise FileExistsError(f"{_listed(existing)} already exist(s): choose another output path, or add {flag} "
                              "to replace them")


def _listed(paths, shown=5):
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(repr(p) for p in paths[:shown]) + more


def write_atomically(path, data: bytes):
    with AtomicFile(path, "wb") as f:
        f.write(data)


def write_image(path, image) -> None:
    """An image (as cv2.imwrite takes it) encoded by the file's extension and written atomically."""
    import cv2

    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
    if not ok:
        raise OSError(f"cannot encode an image for {path}")
    write_atomically(path, encoded.tobytes())


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


class _LineAppendFile:
    """
    What JSONWriter writes metrics.json with: whole lines appended, each flush() one write followed by fsync,
    so the file grows linearly (rewriting it whole at every flush is quadratic over a long run). A process
    killed in the middle of a write can leave at most one torn last line: opening the file cuts it, so a
    resumed run appends after the last complete line and readers never see half a record followed by more.
    """

    def __init__(self, path):
        self.path = path
        cut = _cut_torn_last_line(path)
        if cut:
            logger.warning(f"{path}: cut its torn last line ({cut} bytes) left by an interrupted write")
        self._file = open(path, "ab")
        self._pending = []

    def write(self, text):
        self._pending.append(text)

    def flush(self):
        if self._pending:
            self._file.write("".join(self._pending).encode())
            self._pending = []
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self):
        self.flush()
        self._file.close()


def _cut_torn_last_line(path) -> int:
    """Truncate `path` after its last newline when it does not end with one; returns the bytes cut."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # read back in blocks until the last newline
        end, block = size, 4096
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


class AtomicJSONWriter(JSONWriter):
    """detectron2's JSONWriter (same lines, appended to an existing metrics.json): whole lines only, a torn last
    line of an interrupted run cut when the file is opened again."""

    def __init__(self, json_file, window_size=20):
        # not JSONWriter.__init__: it opens the file in append mode itself
        init_json_writer(self, _LineAppendFile(json_file), window_size)


def remove_stale_temporaries(folder):
    """Remove the temporary files that killed atomic writes left in `folder`; returns their paths."""
    patterns = (".model_*.pth.*.tmp", ".last_checkpoint.*.tmp", ".metrics.json.*.tmp")
    stale = sorted(p for pattern in patterns for p in glob.glob(os.path.join(folder, pattern)))
    for path in stale:
        os.remove(path)
    if stale:
        logger.info(f"Removed {len(stale)} temporary file(s) of interrupted writes: {', '.join(stale)}")
    return stale
