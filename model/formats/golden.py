"""Golden vectors: every op's integer output for N images, in one folder a testbench reads.

Written by `python test_model.py --dump_layers=DIR --limit N` (the numpy engine, the specification)
and, in the same layout, by `./c/inference --dump-layers DIR`; `python compare_dumps.py A B` names
the first op, image and index where two dumps differ. This module is the one writer and reader of
the layout (write_dump, read_dump); the C writer follows this description byte for byte.

Layout of DIR (format "fpgai-golden", version 1)
------------------------------------------------
One tensor per op of the integer graph, in execution order: op `i` produces tensor `i`, op 0 is the
input (the raw uint8 images), the last op the logits. Every value is the op's uint8 output (in
0..255, inside the op's clamp qmin..qmax). Per op `i` with name NAME:

- `op{i:03d}_{NAME}.npy`, e.g. `op000_input.npy`, `op003_features_4.npy` (`i` is at least three
  decimal digits, more when i >= 1000; NAME is the op's name with every character other than
  A-Z a-z 0-9 _ . - replaced by `_`): a NumPy .npy file (format 1.0, as numpy.save writes it),
  dtype uint8 (`|u1`), `fortran_order: False`, shape (N, C, H, W): all N images, each C x H x W
  in the contract's CHW order (a linear op's C values are C x 1 x 1). The data after the header
  is the N*C*H*W bytes, image after image, each in C, H, W order (W fastest).
- `op{i:03d}_{NAME}.hex`: the same N*C*H*W bytes in the same order, for Verilog's `$readmemh`:
  one byte per line as exactly two lower-case hex digits followed by `\\n` (LF; the last line
  too), nothing else (no comments, no `@` addresses, no blank lines): N*C*H*W lines, 3 bytes each.
  Image `n`, channel `c`, row `y`, column `x` is line `((n*C + c)*H + y)*W + x` (from 0).
- `manifest.json`: UTF-8 JSON, one object:
      {"format": "fpgai-golden", "version": 1, "model": the model's name, "images": N,
       "layout": "NCHW",
       "ops": [{"index": i, "name": NAME (unsanitized), "op": its kind ("input", "conv", ...),
                "inputs": [op indices], "shape": [C, H, W], "scale": float, "zero_point": int,
                "qmin": int, "qmax": int, "npy": file name, "hex": file name}, ...]}
  `ops` lists every op, index 0, 1, 2, ... in order; `npy`/`hex` are names inside DIR. A tensor's
  real value is `scale * (q - zero_point)`; `scale` is informative (the C engine has it as float32,
  so readers compare it at float32 precision).

A folder is written whole or not at all: the files go to a temporary folder `.DIR.PID.tmp` beside
DIR, which is renamed to DIR once complete (a previous dump is first renamed to `.DIR.PID.old`,
then removed; such folders of dead PIDs are removed by the next dump).
DIR may not exist, may be empty, or may hold a previous dump (a manifest of this format and only
the files it lists), which is replaced; anything else is refused.
"""
import json
import os
import re
import shutil

import numpy as np

from model.engines.np_engine import NumpyIntegerModel, run_numpy
from model.fileio import ModelFileError

FORMAT, VERSION, LAYOUT = "fpgai-golden", 1, "NCHW"
MANIFEST = "manifest.json"
OP_FIELDS = ("index", "name", "op", "inputs", "shape", "scale", "zero_point", "qmin", "qmax", "npy", "hex")
_HEX = np.frombuffer(b"".join(b"%02x\n" % v for v in range(256)), dtype=np.uint8).reshape(256, 3)


class DumpError(ModelFileError):
    """A dump folder that cannot be written or read (one line, naming the folder or file)."""


def file_stem(index, name):
    """'op{index:03d}_{name}' with name's characters outside [A-Za-z0-9_.-] replaced by '_'."""
    return f"op{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(name))}"


def layer_outputs(state_dict, quant_list, images, batch=16):
    """Every op's output on `images` (uint8 N x C x H x W, numpy or torch) by the numpy kernels
    (KINDS[op].numpy, as model/engines/np_engine.py runs them): a list, op by op, of uint8 arrays
    (N, C, H, W), computed `batch` images at a time (the int64 activations of one batch only)."""
    graph = NumpyIntegerModel(state_dict, quant_list).graph
    images = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    n = len(images)
    outs = [np.empty((n, *op.shape), dtype=np.uint8) for op in graph.ops]
    for start in range(0, n, batch):
        for i, (op, v) in enumerate(graph.walk(images[start:start + batch], run_numpy)):
            v = np.asarray(v).reshape(len(v), *op.shape)
            if v.size and (v.min() < 0 or v.max() > 255):
                raise DumpError(f"op {i} ({op.name}): values outside 0..255")
            outs[i][start:start + len(v)] = v
    return outs


def hex_bytes(values):
    """The .hex file's bytes of a uint8 array (flattened in C order)."""
    return _HEX[np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)].tobytes()


def read_hex(path):
    """The bytes a .hex file of this layout holds, as `bytes` (strict: each line two hex digits and LF)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = np.frombuffer(data, dtype=np.uint8)
    if len(data) % 3 or (lines[2::3] != ord("\n")).any():
        raise DumpError(f"{path}: not a dump .hex file (each line two hex digits and LF)")
    try:
        return bytes.fromhex(bytes(np.delete(lines, np.s_[2::3])).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise DumpError(f"{path}: not a dump .hex file (a line that is not two hex digits)") from None


def _previous_dump_files(folder):
    """The files of the dump in `folder` (manifest included), or None when it holds no dump manifest."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("ops"), list):
        return None
    return {MANIFEST} | {op.get(k) for op in manifest["ops"] if isinstance(op, dict) for k in ("npy", "hex")}


def check_target(folder):
    """Raise DumpError unless `folder` may receive a dump: absent, an empty directory, or a previous
    dump (its manifest and the files it lists, nothing else)."""
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise DumpError(f"{folder}: exists and is not a directory")
    entries = set(os.listdir(folder))
    if not entries:
        return
    known = _previous_dump_files(folder)
    if known is None:
        raise DumpError(f"{folder}: exists, is not empty and holds no {FORMAT} manifest; "
                        f"give an empty or new folder")
    other = sorted(entries - known)
    if other:
        raise DumpError(f"{folder}: holds a previous dump and other files ({', '.join(other[:3])}"
                        f"{', ...' if len(other) > 3 else ''}); refusing to replace it")


def _remove_stale_tmps(parent, name):
    """Remove .NAME.PID.tmp / .NAME.PID.old folders beside NAME whose PID is no longer alive."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.(tmp|old)$")
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except (OSError, OverflowError):
            pass


def manifest_text(manifest):
    """The manifest as JSON text: the header fields one per line, then one line per op."""
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest.items() if k != "ops")
    ops = ",\n".join(f"  {json.dumps(op)}" for op in manifest["ops"])
    return f"{{\n{head},\n \"ops\": [\n{ops}\n ]\n}}\n"


def write_dump(folder, quant_list, per_op_values, model_name):
    """Write the dump of `per_op_values` (op by op, arrays reshapeable to (N, C, H, W), values in
    0..255) of the graph `quant_list` to `folder`, whole or not at all (module docstring)."""
    if len(per_op_values) != len(quant_list):
        raise DumpError(f"{folder}: {len(per_op_values)} tensors for {len(quant_list)} ops")
    n = len(per_op_values[0])
    arrays = []
    for i, (op, v) in enumerate(zip(quant_list, per_op_values)):
        v = np.asarray(v)
        if len(v) != n or v.size != n * int(np.prod(op["shape"])):
            raise DumpError(f"op {i} ({op['name']}): {v.shape} values for {n} images of shape {op['shape']}")
        if v.dtype != np.uint8:
            if v.size and (v.min() < 0 or v.max() > 255):
                raise DumpError(f"op {i} ({op['name']}): values outside 0..255")
        arrays.append(np.ascontiguousarray(v.reshape(n, *op["shape"]), dtype=np.uint8))
    check_target(folder)
    target = os.path.realpath(folder)
    parent, name = os.path.split(target)
    if not name:
        raise DumpError(f"{folder}: cannot be replaced (a root folder)")
    os.makedirs(parent, exist_ok=True)
    _remove_stale_tmps(parent, name)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    old = os.path.join(parent, f".{name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
        ops = []
        for i, (op, v) in enumerate(zip(quant_list, arrays)):
            stem = file_stem(i, op["name"])
            np.save(os.path.join(tmp, stem + ".npy"), v, allow_pickle=False)
            with open(os.path.join(tmp, stem + ".hex"), "wb") as f:
                f.write(hex_bytes(v))
            ops.append({"index": i, "name": op["name"], "op": op["op"], "inputs": [int(j) for j in op["inputs"]],
                        "shape": [int(s) for s in op["shape"]], "scale": float(op["scale"]),
                        "zero_point": int(op["zero_point"]), "qmin": int(op["qmin"]), "qmax": int(op["qmax"]),
                        "npy": stem + ".npy", "hex": stem + ".hex"})
        manifest = {"format": FORMAT, "version": VERSION, "model": model_name, "images": n, "layout": LAYOUT,
                    "ops": ops}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            f.write(manifest_text(manifest))
        for entry in os.listdir(tmp):
            fd = os.open(os.path.join(tmp, entry), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if os.path.isdir(target) and os.listdir(target):     # a previous dump: swap it out, then remove it
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:                                                # absent, or an empty folder (renamed over)
            os.rename(tmp, target)
    except OSError as err:
        raise DumpError(f"{folder}: cannot write the dump ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _inside(folder, name, manifest_path, i):
    """folder/name, if name is a relative path that stays inside folder (symlinks resolved), else
    DumpError: a manifest names only files of its own dump."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise DumpError(f"{manifest_path}: op {i}: file {name!r} is not a relative path inside the dump folder")
    file = os.path.join(folder, name)
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(file)]) != root:
        raise DumpError(f"{manifest_path}: op {i}: file {name!r} resolves outside the dump folder "
                        f"({os.path.realpath(file)}); refusing to read it")
    return file


def read_dump(folder, mmap=True):
    """(manifest, [op 0's values, op 1's, ...]) of a dump folder: the .npy files, each checked to be
    uint8 (images, C, H, W) as the manifest says (memory-mapped unless mmap is false)."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DumpError(f"{folder}: no {MANIFEST} (not a dump folder)") from None
    except (OSError, ValueError) as err:
        raise DumpError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DumpError(f"{path}: not an {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DumpError(f"{path}: version {manifest.get('version')}, this code reads version {VERSION}")
    if manifest.get("layout") != LAYOUT:
        raise DumpError(f"{path}: layout {manifest.get('layout')!r}, expected {LAYOUT!r}")
    n, ops = manifest.get("images"), manifest.get("ops")
    if not isinstance(n, int) or n < 1 or not isinstance(ops, list) or not ops:
        raise DumpError(f"{path}: no images or no ops")
    values = []
    for i, op in enumerate(ops):
        missing = [k for k in OP_FIELDS if not isinstance(op, dict) or k not in op]
        if missing:
            raise DumpError(f"{path}: op {i} lacks {', '.join(missing)}")
        if op["index"] != i:
            raise DumpError(f"{path}: op {i} has index {op['index']} (ops must be listed 0, 1, 2, ...)")
        shape = op["shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise DumpError(f"{path}: op {i} has shape {shape!r}, not [C, H, W]")
        file = _inside(folder, op["npy"], path, i)
        try:
            v = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DumpError(f"{file}: not a readable .npy ({err})") from None
        want = (n, *op["shape"])
        if v.dtype != np.uint8 or v.shape != want:
            raise DumpError(f"{file}: {v.dtype} {list(v.shape)}, the manifest says uint8 {list(want)}")
        values.append(v)
    return manifest, values


def manifest_mismatch(a, b, names=True):
    """None when manifests a and b describe the same images and ops (index, kind, inputs, shape,
    zero point, clamp, scale at float32 precision; and name unless names is false), else one line."""
    if a["images"] != b["images"]:
        return f"manifest mismatch: {a['images']} images in A, {b['images']} in B"
    if len(a["ops"]) != len(b["ops"]):
        return f"manifest mismatch: {len(a['ops'])} ops in A, {len(b['ops'])} in B"
    keys = ("name", "op", "inputs", "shape", "zero_point", "qmin", "qmax", "scale")
    for oa, ob in zip(a["ops"], b["ops"]):
        for k in keys:
            if k == "name" and not names:
                continue
            va, vb = oa[k], ob[k]
            same = np.float32(va) == np.float32(vb) if k == "scale" else va == vb
            if not same:
                return f"manifest mismatch: op {oa['index']} ({oa['name']}): {k} {va} in A, {vb} in B"
    return None


def first_difference(manifest, values_a, values_b):
    """The first differing value in execution order (op, then image, then C,H,W index), as a dict
    {op, name, kind, image, index, c, y, x, a, b, count (differing values in that op)}, or None."""
    for op, va, vb in zip(manifest["ops"], values_a, values_b):
        n = len(va)
        fa, fb = np.asarray(va).reshape(n, -1), np.asarray(vb).reshape(n, -1)
        diff = fa != fb
        if not diff.any():
            continue
        flat = int(np.argmax(diff.reshape(-1)))             # C order: image-major, then C, H, W
        image, index = divmod(flat, fa.shape[1])
        c, y, x = (int(t) for t in np.unravel_index(index, op["shape"]))
        return {"op": op["index"], "name": op["name"], "kind": op["op"], "image": image, "index": index,
                "c": c, "y": y, "x": x, "a": int(fa[image, index]), "b": int(fb[image, index]),
                "count": int(diff.sum())}
    return None
