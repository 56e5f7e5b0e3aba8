"""Atomic writes and checked loads: one place for both rules.

Every file the pipeline writes goes to a temporary name in the same folder and
is renamed over the target only once complete, so an interrupted run never
leaves a half file that a later stage would load.
"""
import contextlib
import os

import torch

# the version each kind of file this project writes has now; a file of another version is refused
FORMAT_VERSIONS = {"fpgai-raw": 1, "fpgai-train-state": 1, "fpgai-quant": 3}


class ModelFileError(RuntimeError):
    pass


def error_line(err):
    """'ExceptionClass: the first line of its message', for a one-line error naming a file."""
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0]}" if text else err.__class__.__name__


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
        obj[1][0] if isinstance(obj, tuple) and len(obj) == 2 and obj[1] else None)
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise ModelFileError(f"{path}: not a {kind} file")
    if header.get("version") != FORMAT_VERSIONS[kind]:
        raise ModelFileError(f"{path}: format version {header.get('version')}, this code reads "
                             f"version {FORMAT_VERSIONS[kind]}; regenerate it{hint}")
    if model is not None and header.get("model") != model:
        raise ModelFileError(f"{path}: holds model '{header.get('model')}', config asks for '{model}'{hint}")
    return obj
