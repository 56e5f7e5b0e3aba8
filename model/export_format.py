"""The exported files, written and read back (README, "Exported files", documents every byte).

{model}_weight.txt  per conv/linear layer: a '# name' line, its weights, a '$ name' line,
                    its biases; 10 comma-separated integers a line
{model}_weight.bin  all layers' weights, 1 byte each (int8, or uint8 in per-tensor mode)
{model}_bias.bin    all layers' biases, int32 little-endian
{model}_quant.txt   'multiplier,shift,zero_point' lines: one a layer (per-tensor mode) or
                    one an output channel (per-channel mode), layers in graph order
{model}_model.bin   the versioned graph description the C engine runs
"""
import os
import struct

import numpy as np

from model.fileio import FORMAT_VERSION, atomic_open

MAGIC = b"FPGAIQM\0"
OP_CODES = {"input": 0, "conv": 1, "linear": 2, "maxpool": 3, "avgpool": 4, "add": 5}
HEADER = struct.Struct("<8s5i32s16s16s")   # magic, version, n_ops, weight_signed, weight_bytes, bias_count, model, dataset, fingerprint
COMMON = struct.Struct("<8if")             # type, n_words, C, H, W, zero_point, qmin, qmax, scale
COMMON_WORDS = 7                           # words of COMMON after type and n_words


class ExportFormatError(ValueError):
    pass


def weighted_ops(quant_list):
    return [op for op in quant_list if op["op"] in ("conv", "linear")]


def _specific_words(op, quant_list, state, offsets):
    kind = op["op"]
    if kind == "conv":
        w = state[op["name"] + ".weight"]
        cin = quant_list[op["inputs"][0]]["shape"][0]
        return [op["inputs"][0], cin, w.shape[2], w.shape[3], *op["stride"], *op["padding"], op["groups"],
                op["weight_zero_point"], *offsets[op["name"]],
                *state[op["name"] + ".multiplier"].tolist(), *state[op["name"] + ".shift"].tolist()]
    if kind == "linear":
        in_features = state[op["name"] + ".weight"].shape[1]
        return [op["inputs"][0], in_features, op["weight_zero_point"], *offsets[op["name"]],
                *state[op["name"] + ".multiplier"].tolist(), *state[op["name"] + ".shift"].tolist()]
    if kind == "maxpool":
        return [op["inputs"][0], *op["kernel"], *op["stride"], *op["padding"]]
    if kind == "avgpool":
        return [op["inputs"][0], *op["kernel"], *op["stride"], op["multiplier"], op["shift"]]
    if kind == "add":
        return [*op["inputs"], *op["multipliers"], op["shift"]]
    return []


def model_bin_bytes(state, quant_list):
    header = quant_list[0]
    offsets, w_off, b_off = {}, 0, 0
    for op in weighted_ops(quant_list):
        offsets[op["name"]] = (w_off, b_off)
        w_off += state[op["name"] + ".weight"].numel()
        b_off += state[op["name"] + ".bias"].numel()
    signed = int(header["weight_mode"] == "per_channel")
    out = [HEADER.pack(MAGIC, FORMAT_VERSION, len(quant_list), signed, w_off, b_off,
                       header["model"].encode(), header["dataset"].encode(), header["fingerprint"].encode())]
    for op in quant_list:
        words = _specific_words(op, quant_list, state, offsets)
        out.append(COMMON.pack(OP_CODES[op["op"]], COMMON_WORDS + len(words), *op["shape"],
                               op["zero_point"], op["qmin"], op["qmax"], op["scale"]))
        out.append(struct.pack(f"<{len(words)}i", *words))
    return b"".join(out)


def _txt_lines(values):
    values = [str(int(v)) for v in values]
    return [",".join(values[i:i + 10]) for i in range(0, len(values), 10)]


def quant_txt_lines(state, quant_list):
    per_tensor = quant_list[0]["weight_mode"] == "per_tensor"
    lines = []
    for op in weighted_ops(quant_list):
        pairs = list(zip(state[op["name"] + ".multiplier"].tolist(), state[op["name"] + ".shift"].tolist()))
        for m, s in pairs[:1] if per_tensor else pairs:
            lines.append(f"{m},{s},{op['zero_point']}")
    return lines


def export_paths(folder, model):
    return {kind: os.path.join(folder, f"{model}_{kind}") for kind in
            ("weight.txt", "weight.bin", "bias.bin", "quant.txt", "model.bin")}


def write_export(state, quant_list, folder, mode):
    """Write every file of `mode` (txt | bin | both), each atomically; returns the paths written."""
    paths = export_paths(folder, quant_list[0]["model"])
    layers = weighted_ops(quant_list)
    written = []

    def put(kind, data):
        with atomic_open(paths[kind], "wb") as f:
            f.write(data)
        written.append(paths[kind])

    if mode in ("txt", "both"):
        lines = []
        for op in layers:
            w, b = state[op["name"] + ".weight"], state[op["name"] + ".bias"]
            lines.append(f"# {op['name']} {op['op']} weight {'x'.join(map(str, w.shape))}")
            lines += _txt_lines(w.flatten().tolist())
            lines.append(f"$ {op['name']} bias {b.numel()}")
            lines += _txt_lines(b.tolist())
        put("weight.txt", ("\n".join(lines) + "\n").encode())
    if mode in ("bin", "both"):
        put("weight.bin", b"".join(state[op["name"] + ".weight"].numpy().tobytes() for op in layers))
        put("bias.bin", b"".join(state[op["name"] + ".bias"].numpy().astype("<i4").tobytes() for op in layers))
    put("quant.txt", ("\n".join(quant_txt_lines(state, quant_list)) + "\n").encode())
    put("model.bin", model_bin_bytes(state, quant_list))
    return written


def read_weight_txt(path):
    """[(name, weights list, biases list)] of a weight.txt; a clear error on any malformed line."""
    layers, current, section = [], None, None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line[0] in "#$":
                name = line[1:].split()[0] if len(line) > 1 and line[1:].split() else ""
                if line[0] == "#":
                    current = [name, [], []]
                    layers.append(current)
                    section = 1
                elif current is None or name != current[0]:
                    raise ExportFormatError(f"{path}:{lineno}: '$' line for '{name}' without its '#' line")
                else:
                    section = 2
                continue
            if current is None:
                raise ExportFormatError(f"{path}:{lineno}: values before the first '#' line")
            for field in line.split(","):
                try:
                    current[section].append(int(field))
                except ValueError:
                    raise ExportFormatError(f"{path}:{lineno}: '{field.strip()}' is not an integer") from None
    return [tuple(layer) for layer in layers]


def read_model_bin(path):
    """(header dict, [op dicts with their raw words]) of a model.bin; strict length checks."""
    data = open(path, "rb").read()
    if len(data) < HEADER.size:
        raise ExportFormatError(f"{path}: {len(data)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, n_ops, signed, w_bytes, b_count, model, dataset, fp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ExportFormatError(f"{path}: bad magic {magic!r}, not an FPGAI model file")
    if version != FORMAT_VERSION:
        raise ExportFormatError(f"{path}: format version {version}, expected {FORMAT_VERSION}")
    header = {"version": version, "n_ops": n_ops, "weight_signed": signed, "weight_bytes": w_bytes,
              "bias_count": b_count, "model": model.rstrip(b"\0").decode(),
              "dataset": dataset.rstrip(b"\0").decode(), "fingerprint": fp.rstrip(b"\0").decode()}
    pos, ops = HEADER.size, []
    for i in range(n_ops):
        if pos + COMMON.size > len(data):
            raise ExportFormatError(f"{path}: truncated in op {i}")
        code, n_words, c, h, w, zp, qmin, qmax, scale = COMMON.unpack_from(data, pos)
        extra = n_words - COMMON_WORDS
        end = pos + 8 + 4 * n_words
        if extra < 0 or end > len(data):
            raise ExportFormatError(f"{path}: op {i} claims {n_words} words, past the end of the file")
        words = list(struct.unpack_from(f"<{extra}i", data, pos + COMMON.size))
        ops.append({"code": code, "shape": [c, h, w], "zero_point": zp, "qmin": qmin, "qmax": qmax,
                    "scale": scale, "words": words})
        pos = end
    if pos != len(data):
        raise ExportFormatError(f"{path}: {len(data) - pos} bytes after the last op")
    return header, ops


def read_bins(weight_path, bias_path, signed):
    return (np.fromfile(weight_path, dtype=np.int8 if signed else np.uint8),
            np.fromfile(bias_path, dtype="<i4"))
