"""Helpers shared by several test modules (tests/ is on sys.path under pytest's default import mode)."""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def once_per_session(tmp_path_factory, name: str):
    """(folder, ready): a folder shared by every xdist worker of this test session, held under a file lock, so
    that the first worker builds the expensive exports and the others reuse them (module fixtures would
    otherwise run once per worker). ready: an earlier worker finished building."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent   # the session's folder, above the per-worker ones
    folder = base / name
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder, (folder / ".done").exists()
        (folder / ".done").touch()
