"""Atomic writes and checked loads: one place for both rules.

Every regular file the pipeline writes goes to a temporary name in the same
folder and is renamed over the target only once complete, so an interrupted run
never leaves a half file that a later stage would load; devices, FIFOs and "-"
(stdout) are written directly, symlinks through to their target (atomic_open).
"""
import contextlib
import errno
import functools
import glob
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import torch

# the version each kind of file this project writes has now; a file of another version is refused
FORMAT_VERSIONS = {"fpgai-raw": 1, "fpgai-train-state": 2, "fpgai-quant": 3, "fpgai-qat-state": 1}


class ModelFileError(RuntimeError):
    pass


class WriteError(OSError):
    """A file could not be written (disk full, folder not writable): one line naming it; the
    temporary is gone and the file, if it was there, is as it was (str(err) is the whole line)."""


def disk_full(err):
    """True for the errors a full disk (or quota, or file-size limit) raises: OSError ENOSPC /
    EDQUOT / EFBIG, and torch.save's RuntimeError 'unexpected pos' (its zip writer's short write)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


def write_failure(path, err, replaced=True):
    """The WriteError (one line, naming `path`) of an error raised while writing `path`."""
    if isinstance(err, WriteError):
        return err
    kept = "; nothing was replaced" if replaced else ""
    if disk_full(err):
        return WriteError(f"{path}: no space left on the device{kept}")
    reason = (err.strerror if isinstance(err, OSError) and err.strerror else error_line(err))
    return WriteError(f"{path}: cannot write it ({reason}){kept}")


def check_writable(folder, option, value=None):
    """Raise WriteError (one line naming `option`=`value`, default `folder`) unless files can be
    created in `folder`, or in the nearest folder above it that exists (the stage creates the rest):
    a probe file is created there and removed, so a read-only folder is found before any work, for
    root too."""
    shown = f"{option}={folder if value is None else value}"
    path = os.path.abspath(folder or ".")
    probe_in = path
    while not os.path.lexists(probe_in):
        probe_in = os.path.dirname(probe_in)
    if not os.path.isdir(probe_in):
        where = "" if probe_in == path and value is None else f" ({probe_in} is not a folder)"
        raise WriteError(f"{shown}: {'not a folder' if probe_in == path else 'no folder can be made there'}{where}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fpgai-write-probe-", dir=probe_in)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise WriteError(f"{shown}: cannot write in {probe_in} ({err.strerror or error_line(err)})") from None


def check_space(folder, needed, option):
    """Raise WriteError (one line naming `option`) unless the file system of `folder` (or of the
    nearest folder above it that exists) has about `needed` bytes free: a stage's estimate of what it
    will write, checked before its work (a write that still runs out is one line too: write_failure)."""
    path = os.path.abspath(folder or ".")
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    free = shutil.disk_usage(path).free
    if free < needed:
        raise WriteError(f"{option}={folder}: {free / 1e6:.1f} MB free on its file system, about "
                         f"{needed / 1e6:.1f} MB needed; free some space or choose another folder")


def check_output_file(path, option):
    """Raise WriteError (one line naming `option`) unless `path` can be written by atomic_open:
    not a directory, its folder writable (devices, FIFOs and "-" are written directly: not probed)."""
    if path == "-" or path.startswith("/dev/"):
        return
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{option}={path}: is a directory (give a file name)")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return
    target = os.path.realpath(path) if os.path.islink(path) else path
    check_writable(os.path.dirname(target) or ".", option, path)


def check_not_tracked(paths, overwrite, elsewhere):
    """Raise WriteError (one line) if one of `paths` is a file git tracks (a shipped model, a committed
    result), or a folder holding one, and `overwrite` is False: a stage replaces those only when asked.
    `elsewhere` names the option that writes to another folder instead. Outside a git checkout, or without git, nothing is
    tracked."""
    if overwrite:
        return
    for path in paths:
        if not os.path.lexists(path):
            continue
        target = os.path.realpath(path)
        try:
            proc = subprocess.run(["git", "-C", os.path.dirname(target), "ls-files", "--error-unmatch", "--",
                                   os.path.basename(target)], capture_output=True)
        except OSError:                                       # no git: no checkout to protect
            return
        if proc.returncode == 0:
            what = "a folder holding files git tracks" if os.path.isdir(target) else "a file git tracks"
            raise WriteError(f"{path}: {what} (shipped with the repository); pass --overwrite to "
                             f"replace it, or {elsewhere} to write elsewhere")


def stage_main(main):
    """Decorates a stage's main() (also the installed command's entry point, pyproject.toml): a
    WriteError raised while writing (a full disk) is one `error:` line and exit 1."""
    @functools.wraps(main)
    def run():
        try:
            return main()
        except WriteError as err:
            sys.exit(f"error: {err}")
    return run


def error_line(err):
    """'ExceptionClass: the first line of its message', for a one-line error naming a file."""
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0]}" if text else err.__class__.__name__


def _is_stdout(path, st):
    try:
        out = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):           # stdout replaced or closed
        return False
    return (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino)


def _remove_stale_tmps(folder, name):
    """Remove .NAME.PID.tmp beside NAME whose PID is no longer alive (a SIGKILLed writer's)."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        pid = os.path.basename(tmp)[len(name) + 2:-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        except (OSError, OverflowError):                     # alive (another user's), or not a PID
            pass


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """open() for writing, by one rule for where the bytes go:
    - "-", or the very file stdout is: stdout, not closed;
    - a character or block device, a FIFO, a socket, or a path under /dev/: written directly,
      no temporary and no rename (a device node is never replaced);
    - a directory: IsADirectoryError("PATH: is a directory");
    - anything else (a regular file, a path not there yet) atomically: .NAME.PID.tmp beside it,
      renamed over it once complete and fsynced; a symlink is followed to its final target, so the
      link stays and the target is replaced.  The temporary is removed on every error; those a
      SIGKILLed writer left (PID no longer alive) are removed by the next write of the same file."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if path == "-" or (st is not None and _is_stdout(path, st)):
        sys.stdout.flush()
        out = sys.stdout.buffer if "b" in mode else sys.stdout
        yield out
        out.flush()
        return
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{path}: is a directory")
    if (st is not None and not stat.S_ISREG(st.st_mode)) or path.startswith("/dev/"):
        try:
            with open(path, mode) as f:
                yield f
        except (OSError, RuntimeError) as err:
            if isinstance(err, OSError) or disk_full(err):
                raise write_failure(path, err, replaced=False) from None
            raise
        return
    target = os.path.realpath(path) if os.path.islink(path) else path
    folder, name = os.path.split(target)
    folder = folder or "."
    if not name:
        raise IsADirectoryError(f"{path}: is a directory")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise write_failure(path, err, replaced=False) from None
    _remove_stale_tmps(folder, name)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:      # a full disk, or the folder unwritable: one line
        if isinstance(err, OSError) or disk_full(err):
            raise write_failure(path, err) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_checked(path, kind, model=None, hint=""):
    """torch.load(weights_only=True) of a file written by this project, with its
    kind, format version and model name checked; a clear error otherwise."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file{hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFileError(f"{path}: not a readable {kind} file ({error_line(err)})") from None
    header = obj.get("header") if isinstance(obj, dict) else (
        obj[1][0] if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], list) and obj[1] else None)
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise ModelFileError(f"{path}: not a {kind} file")
    if header.get("version") != FORMAT_VERSIONS[kind]:
        raise ModelFileError(f"{path}: format version {header.get('version')}, this code reads "
                             f"version {FORMAT_VERSIONS[kind]}; regenerate it{hint}")
    if model is not None and header.get("model") != model:
        raise ModelFileError(f"{path}: holds model '{header.get('model')}', config asks for '{model}'{hint}")
    return obj
