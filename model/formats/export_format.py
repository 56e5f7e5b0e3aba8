"""The exported files, written and read back (docs/contract.md documents every byte).

{model}_weight.txt  per conv/linear layer: a '# name' line, its weights, a '$ name' line,
                    its biases; 10 comma-separated integers a line
{model}_weight.bin  all layers' weights, each layer packed at its weight_bits (pack_weights: a
                    little-endian bit string, one byte a weight at 8 bits)
{model}_bias.bin    all layers' biases, int32 little-endian
{model}_quant.txt   'multiplier,shift,zero_point' lines: one a layer (per-tensor mode) or
                    one an output channel (per-channel mode), layers in graph order
{model}_model.bin   the graph (format v4): the op records of model/ops, and the size and
                    CRC-32 of every weight file beside it, so the set is sealed
{model}_model.h/.c  EXPORT_MODE=c, for firmware: model.bin, weight.bin and bias.bin as const
                    byte arrays (flash), and #defines of the sizes the core library needs
{model}_model.onnx  EXPORT_MODE=onnx: the integer graph for ONNX Runtime and Netron (model/formats/onnx_export.py)
"""
import glob
import os
import re
import struct
import zlib

import numpy as np

from model.fileio import atomic_open
from model.graph import last_readers
# the C loader's limits, named here too (export_format.MAX_DIM, ...)
from model.limits import (INT32_MAX, MAX_ARENA, MAX_DIM, MAX_INPUTS, MAX_OPS, MAX_SCRATCH, MAX_SHIFT,
                          MAX_TENSOR, MAX_WEIGHTS, MIN_OPS)
from model.ops.weighted import weight_count
from model.ops import BY_CODE, KINDS, OWN_PARAM_RANGES, REQUANT_COUNTS, param_words, params_from_words, weighted_ops

MAGIC = b"FPGAIQM\0"
MODEL_BIN_VERSION = 4
READ_VERSIONS = (3, 4)          # version 3: no weight_bits word, every layer 8 bits
HEADER_BYTES = 256
# magic, version, crc, header size, n_ops, weight mode, total weights, total biases, exported formats,
# (size, crc, 0) of weight.bin, bias.bin, weight.txt, model, dataset, fingerprint; reserved zeros to 256
HEADER = struct.Struct("<8s8I" + "QII" * 3 + "32s16s24s")
WEIGHT_FILES = ("weight.bin", "bias.bin", "weight.txt")
FORMAT_BITS = {"bin": 1, "txt": 2, "both": 3}                  # bit 0: weight.bin + bias.bin, bit 1: weight.txt
COMMON = struct.Struct("<2I6if")                               # type, n_words, C, H, W, zero_point, qmin, qmax, scale
BLOCKS = (("multiplier", "n_mult"), ("shift", "n_shift"), ("table", "n_table"))   # counted arrays ending a record
assert HEADER.size <= HEADER_BYTES

# What the C loader accepts in model.bin beyond the limits (model/limits.py, named here too: export_format.MAX_DIM):
# the header strings and the PARAM rows of c/ops/KIND.c, written once for Python; the tuple check
# (model/formats/tuple_check.py) reads them, so a tuple Python loads is one the C engine loads;
# tests/test_hostile_inputs.py compares them with the C sources.
NAME_BYTES = {"model": 31, "dataset": 15, "fingerprint": 23}    # header strings, without their NUL
DATASETS = ("mnist", "cifar10", "custom")
WEIGHT_MODES = ("per_channel", "per_tensor")
PARAM_RANGES = {"kernel_h": (1, MAX_DIM), "kernel_w": (1, MAX_DIM), "stride_h": (1, MAX_DIM),
                "stride_w": (1, MAX_DIM), "pad_h": (0, MAX_DIM), "pad_w": (0, MAX_DIM), "pad_top": (0, MAX_DIM),
                "pad_left": (0, MAX_DIM), "pad_bottom": (0, MAX_DIM), "pad_right": (0, MAX_DIM),
                "dilation_h": (1, MAX_DIM), "dilation_w": (1, MAX_DIM), "groups": (1, MAX_DIM),
                "weight_zero_point": (0, 255), "weight_offset": (0, INT32_MAX), "bias_offset": (0, INT32_MAX),
                "weight_bits": (2, 8), "ceil_mode": (0, 1), "channel_start": (0, MAX_DIM), "scale_h": (1, MAX_DIM), "scale_w": (1, MAX_DIM),
                **OWN_PARAM_RANGES}
# the counted arrays ending a record: each value's range
BLOCK_RANGES = {"multiplier": (0, INT32_MAX), "shift": (0, MAX_SHIFT), "table": (0, 255)}


class ExportFormatError(ValueError):
    pass


def crc32(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def pack_weights(values, bits):
    """The bytes of one layer's weights (any int array, one value each) packed at `bits`: value j at bits
    j*bits .. j*bits + bits - 1 of a little-endian bit string (docs/contract.md "weight.bin"), the last
    byte padded with zeros; two's complement for signed values."""
    v = np.asarray(values, dtype=np.int64).reshape(-1) & ((1 << bits) - 1)
    if bits == 8:
        return v.astype(np.uint8).tobytes()
    bit_string = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bit_string, bitorder="little").tobytes()


def unpack_weights(data, count, bits, signed):
    """The `count` values of a layer packed by pack_weights (int64), sign-extended if `signed`."""
    need = packed_bytes(count, bits)
    if len(data) < need:
        raise ExportFormatError(f"{len(data)} bytes hold fewer than {count} weights of {bits} bits ({need} bytes)")
    bit_string = np.unpackbits(np.frombuffer(data[:need], dtype=np.uint8), bitorder="little")
    if bit_string[count * bits:].any():
        raise ExportFormatError(f"the padding bits after the last of {count} weights of {bits} bits are not zero")
    bit_string = bit_string[:count * bits]
    v = (bit_string.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v) if signed else v


def packed_bytes(count, bits):
    """The bytes a layer of `count` weights of `bits` bits takes in weight.bin."""
    return (count * bits + 7) // 8


def record_bytes(op, state):
    """One op's model.bin record: common words, inputs, the kind's parameters, the requantization
    and table blocks."""
    kind = KINDS[op["op"]]
    words = [len(op["inputs"]), *op["inputs"], *param_words(op)]
    for field, rule in BLOCKS:
        values = state[f"{op['name']}.{field}"].tolist() if getattr(kind, rule) != "0" else []
        words += [len(values), *values]
    return (COMMON.pack(kind.code, 7 + len(words), *op["shape"], op["zero_point"], op["qmin"], op["qmax"], op["scale"])
            + struct.pack(f"<{len(words)}i", *words))


def model_bin_bytes(state, quant_list, files):
    """model.bin of the graph; `files` maps each exported weight file (WEIGHT_FILES) to its bytes."""
    header = quant_list[0]
    records, w_off, b_off = [], 0, 0
    for op in quant_list:
        if KINDS[op["op"]].weighted:
            op = dict(op, weight_offset=w_off, bias_offset=b_off)
            w_off += packed_bytes(state[op["name"] + ".weight"].numel(), op["weight_bits"])
            b_off += state[op["name"] + ".bias"].numel()
        records.append(record_bytes(op, state))
    bits = ("weight.bin" in files) * FORMAT_BITS["bin"] | ("weight.txt" in files) * FORMAT_BITS["txt"]
    seals = []
    for name in WEIGHT_FILES:
        seals += [len(files[name]), crc32(files[name]), 0] if name in files else [0, 0, 0]
    for field, width in NAME_BYTES.items():
        value = header[field]
        if len(value.encode()) > width:
            raise ExportFormatError(f"{field} '{value}' is longer than the {width} bytes model.bin holds")
    body = (HEADER.pack(MAGIC, MODEL_BIN_VERSION, 0, HEADER_BYTES, len(quant_list),
                        int(header["weight_mode"] == "per_channel"), w_off, b_off, bits, *seals,
                        header["model"].encode(), header["dataset"].encode(), header["fingerprint"].encode())
            .ljust(HEADER_BYTES, b"\0") + b"".join(records))
    return body[:12] + struct.pack("<I", crc32(body[16:])) + body[16:]


def _txt_lines(values):
    values = [str(int(v)) for v in values]
    return [",".join(values[i:i + 10]) for i in range(0, len(values), 10)]


def weight_txt_bytes(state, quant_list):
    lines = []
    for op in weighted_ops(quant_list):
        w, b = state[op["name"] + ".weight"], state[op["name"] + ".bias"]
        lines.append(f"# {op['name']} {op['op']} weight {'x'.join(map(str, w.shape))} bits {op['weight_bits']}")
        lines += _txt_lines(w.flatten().tolist())
        lines.append(f"$ {op['name']} bias {b.numel()}")
        lines += _txt_lines(b.tolist())
    return ("\n".join(lines) + "\n").encode()


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
            ("weight.txt", "weight.bin", "bias.bin", "quant.txt", "model.bin", "model.c", "model.h", "model.onnx")}


# per EXPORT_MODE, the files it writes (write_export builds them, model.bin last)
MODE_FILES = {"txt": ("weight.txt", "quant.txt", "model.bin"),
              "bin": ("weight.bin", "bias.bin", "quant.txt", "model.bin"),
              "both": ("weight.txt", "weight.bin", "bias.bin", "quant.txt", "model.bin"),
              "c": ("model.c", "model.h"), "onnx": ("model.onnx",)}


def removed_files(mode):
    """The files an export in `mode` removes before it writes: model.bin first and the weight files of
    the other format; mode c its own two; mode onnx none (it leaves the other files as they are)."""
    if mode == "c":
        return MODE_FILES["c"]
    if mode == "onnx":
        return ()
    return ("model.bin", *(k for k in WEIGHT_FILES if k not in MODE_FILES[mode]))


def export_targets(folder, model, mode):
    """Every path an export in `mode` writes or removes: what a stage checks before it starts."""
    paths = export_paths(folder, model)
    return [paths[k] for k in dict.fromkeys((*removed_files(mode), *MODE_FILES[mode]))]


def arena_bytes(quant_list):
    """The bytes of the C engine's arena (c/fpgai.c plan_memory), by the same rule: op i's tensor
    goes to the smallest free slot that fits, else the largest free one (grown), else a new slot;
    a slot is free once every reader of its tensor has run; the last op's tensor stays live; then,
    4-byte aligned, the most scratch a reference kernel asks for (scratch_bytes)."""
    n = len(quant_list)
    last_use = last_readers([op["inputs"] for op in quant_list])
    last_use[-1] = n
    sizes, holder = [], []            # per slot: its size and the tensor in it
    for i, op in enumerate(quant_list):
        need = op["shape"][0] * op["shape"][1] * op["shape"][2]
        best = None
        for s, t in enumerate(holder):
            if last_use[t] >= i:
                continue
            fits, best_fits = sizes[s] >= need, best is not None and sizes[best] >= need
            if best is None or (fits and (not best_fits or sizes[s] < sizes[best])) or (
                    not fits and not best_fits and sizes[s] > sizes[best]):
                best = s
        if best is None:
            best = len(sizes)
            sizes.append(0)
            holder.append(i)
        sizes[best] = max(sizes[best], need)
        holder[best] = i
    return (sum(sizes) + 3) // 4 * 4 + max(scratch_bytes(op, quant_list) for op in quant_list)


def scratch_bytes(op, quant_list):
    """The scratch the C engine's reference kernel of op asks for (KIND_scratch in c/ops/conv.c and
    linear.c): a conv's row of int32 accumulators (its output row) and, below 8 bits, one output
    channel's K weights unpacked (conv and linear)."""
    if not KINDS[op["op"]].weighted:
        return 0
    row = 4 * op["shape"][2] if op["op"] == "conv" else 0
    unpacked = weight_count(op, quant_list[op["inputs"][0]]) // op["shape"][0] if op["weight_bits"] < 8 else 0
    return row + unpacked


def _c_array(name, data):
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    return f"const uint8_t {name}[{len(data)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def c_identifier(model):
    """The C name of a model's arrays and #defines (EXPORT_MODE=c): its name with every character
    other than A-Z a-z 0-9 _ replaced by '_', 'm_' before a leading digit."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", model)
    return ("m_" if ident[0].isdigit() else "") + ident


def c_source(quant_list, files):
    """(model.h, model.c) of EXPORT_MODE=c: the sealed model.bin, weight.bin and bias.bin bytes
    as const arrays, and the sizes a firmware gives the core (c/fpgai.h)."""
    head = quant_list[0]
    ident = c_identifier(head["model"])
    up, low = ident.upper(), ident.lower()
    c, h, w = head["shape"]
    out = quant_list[-1]["shape"]
    arrays = {"model_bin": files["model.bin"], "weight_bin": files["weight.bin"], "bias_bin": files["bias.bin"]}
    header = "\n".join([
        f"/* {head['model']}: FPGAI export for the core library (c/fpgai.h), model.bin format v{MODEL_BIN_VERSION},",
        f" * fingerprint {head['fingerprint']}. Written by export_quant_model.py --export_mode=c. */",
        f"#ifndef FPGAI_MODEL_{up}_H", f"#define FPGAI_MODEL_{up}_H", "", "#include \"fpgai.h\"", "",
        f"#define {up}_INPUT_C {c}", f"#define {up}_INPUT_H {h}", f"#define {up}_INPUT_W {w}",
        f"#define {up}_OUTPUTS {out[0] * out[1] * out[2]}",
        f"#define {up}_ARENA_BYTES {arena_bytes(quant_list)}    /* fpgai_run's arena: the memory plan */",
        f"#define {up}_STORAGE_BYTES FPGAI_STORAGE_BYTES({len(quant_list)}, {len(files['model.bin'])})",
        *(f"extern const uint8_t {low}_{k}[{len(v)}];" for k, v in arrays.items()), "", "#endif", ""])
    body = (f"/* {head['model']}: the sealed export files as bytes (see {head['model']}_model.h) */\n"
            f"#include \"{head['model']}_model.h\"\n\n" + "\n".join(_c_array(f"{low}_{k}", v) for k, v in arrays.items()))
    return header.encode(), body.encode()


def write_export(state, quant_list, folder, mode):
    """Write every file of `mode` (txt | bin | both | c | onnx), each atomically, model.bin last; returns
    the paths written. The old model.bin goes first and the weight files of the other format are
    deleted, so an interrupted export leaves no model.bin and no stale file can pass for new.
    Mode c writes model.c, then model.h (its #defines: last), the bin files' bytes inside them.
    Mode onnx writes model.onnx only, and leaves the other files as they are."""
    layers = weighted_ops(quant_list)
    files = {}
    if mode in ("txt", "both"):
        files["weight.txt"] = weight_txt_bytes(state, quant_list)
    if mode in ("bin", "both", "c"):
        files["weight.bin"] = b"".join(pack_weights(state[op["name"] + ".weight"].numpy(), op["weight_bits"])
                                       for op in layers)
        files["bias.bin"] = b"".join(state[op["name"] + ".bias"].numpy().astype("<i4").tobytes() for op in layers)
    files["quant.txt"] = ("\n".join(quant_txt_lines(state, quant_list)) + "\n").encode()
    files["model.bin"] = model_bin_bytes(state, quant_list, files)     # checks the names before any file goes
    if mode == "c":
        header, body = c_source(quant_list, files)
        files = {"model.c": body, "model.h": header}
    if mode == "onnx":
        from model.formats.onnx_export import onnx_bytes      # the onnx package: needed by this mode only
        files = {"model.onnx": onnx_bytes(state, quant_list)}

    paths = export_paths(folder, quant_list[0]["model"])
    for path in paths.values():                  # litter of an export killed before (atomic_open's names)
        for tmp in glob.glob(os.path.join(glob.escape(os.path.dirname(path) or "."),
                                          f".{glob.escape(os.path.basename(path))}.*.tmp")):
            os.remove(tmp)
    assert tuple(files) == MODE_FILES[mode]
    for kind in removed_files(mode):
        if os.path.lexists(paths[kind]):
            os.remove(paths[kind])
    written = []
    for kind, data in files.items():              # dict order: model.bin last
        with atomic_open(paths[kind], "wb") as f:
            f.write(data)
        written.append(paths[kind])
    return written


def read_weight_txt(path):
    """[(name, weights list, biases list)] of a weight.txt; a clear error on any malformed line."""
    layers, current, section = [], None, None
    with open(path) as f:
        text = f.read()
    if text and not text.endswith("\n"):
        raise ExportFormatError(f"{path}: the last line has no '\\n': the file is cut short")
    for lineno, line in enumerate(text.splitlines(), 1):
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
    """(header dict, [op dicts]) of a model.bin v4 (or v3: every layer's weight_bits 8): each op has `op` (its kind), shape, zero_point,
    qmin, qmax, scale, inputs, its kind's parameters under their quant_list names (plus
    weight_offset / bias_offset), multiplier, shift and table lists. Strict length and CRC checks."""
    data = open(path, "rb").read()
    if len(data) < HEADER_BYTES:
        raise ExportFormatError(f"{path}: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
    fields = HEADER.unpack_from(data)
    magic, version, crc, header_bytes, n_ops, per_channel, w_total, b_total, bits = fields[:9]
    if magic != MAGIC:
        raise ExportFormatError(f"{path}: bad magic {magic!r}, not an FPGAI model file")
    if version not in READ_VERSIONS:
        raise ExportFormatError(f"{path}: format version {version}, this code reads versions "
                                f"{' and '.join(map(str, READ_VERSIONS))}; run export_quant_model.py again")
    if crc != crc32(data[16:]):
        raise ExportFormatError(f"{path}: CRC-32 0x{crc32(data[16:]):08x}, the header says 0x{crc:08x}: damaged")
    if header_bytes != HEADER_BYTES:
        raise ExportFormatError(f"{path}: header size {header_bytes}, expected {HEADER_BYTES}")
    seals = fields[9:18]
    header = {"version": version, "n_ops": n_ops, "weight_mode": "per_channel" if per_channel else "per_tensor",
              "weight_bytes": w_total, "bias_count": b_total, "formats": bits,
              "files": {name: {"size": seals[3 * i], "crc32": seals[3 * i + 1]}
                        for i, name in enumerate(WEIGHT_FILES)},
              **{k: v.rstrip(b"\0").decode() for k, v in zip(("model", "dataset", "fingerprint"), fields[18:21])}}
    pos, ops = HEADER_BYTES, []
    for i in range(n_ops):
        if pos + COMMON.size > len(data):
            raise ExportFormatError(f"{path}: truncated in op {i}")
        code, n_words, c, h, w, zp, qmin, qmax, scale = COMMON.unpack_from(data, pos)
        end = pos + 8 + 4 * n_words
        if n_words < 7 or end > len(data) or code not in BY_CODE:
            raise ExportFormatError(f"{path}: op {i}: type {code} with {n_words} words does not fit the file")
        kind = BY_CODE[code]
        words = list(struct.unpack_from(f"<{n_words - 7}i", data, pos + COMMON.size))

        def take(count):
            if count > len(words):
                raise ExportFormatError(f"{path}: op {i} ({kind.name}): record shorter than its fields")
            out = words[:count]
            del words[:count]
            return out

        op = {"op": kind.name, "shape": [c, h, w], "zero_point": zp, "qmin": qmin, "qmax": qmax, "scale": scale}
        op["inputs"] = take(take(1)[0])
        params = kind.params if version >= 4 else tuple(p for p in kind.params if p != "weight_bits")
        op.update(params_from_words(kind, take(len(params)), params))
        if kind.weighted:
            op.setdefault("weight_bits", 8)
        for field, rule in BLOCKS:
            op[field] = take(take(1)[0])
            if len(op[field]) != REQUANT_COUNTS[getattr(kind, rule)](op):
                raise ExportFormatError(f"{path}: op {i} ({kind.name}): {len(op[field])} {field} values, "
                                        f"expected {getattr(kind, rule)}")
        if words:
            raise ExportFormatError(f"{path}: op {i} ({kind.name}): {len(words)} words after its fields")
        ops.append(op)
        pos = end
    if pos != len(data):
        raise ExportFormatError(f"{path}: {len(data) - pos} bytes after the last op")
    return header, ops


def read_bins(weight_path, bias_path, quant_list):
    """(every weight, every bias) of weight.bin and bias.bin as written for quant_list: the layers'
    weights unpacked, one value each (int64), layer after layer."""
    data, weights = open(weight_path, "rb").read(), []
    signed, pos = quant_list[0]["weight_mode"] == "per_channel", 0
    for op in weighted_ops(quant_list):
        count = weight_count(op, quant_list[op["inputs"][0]])
        size = packed_bytes(count, op["weight_bits"])
        try:
            weights.append(unpack_weights(data[pos:pos + size], count, op["weight_bits"], signed))
        except ExportFormatError as err:
            raise ExportFormatError(f"{weight_path}: layer {op['name']}: {err}") from None
        pos += size
    return np.concatenate(weights), np.fromfile(bias_path, dtype="<i4")
