"""export_quant_model.py --export_mode=rtl: the program and memory images of the generic RTL engine
(c/rtl/engine/, docs/fpga.md), compiled from the integer graph.

Writes the folder `{export_dir}/{model}_rtl/` for a target (TARGETS: its MAC lanes P and weight memory):
  params.vh      the engine's sizes (Verilog localparams, `include`d by engine.v)
  program.hex    instructions of NF 16-bit fields, one or more an op (FIELDS below; a count's `_last` is the
                 count less 1: the generator compares with it, no subtraction on the clock's path), then an end word
  weights.hex    WDEPTH words of P bytes (byte l, lane l, lowest): instruction by instruction, group g of its
                 (up to P) output channels, tap k: the weight of the group's channel l at tap k (0 past its last)
  channels.hex   per output channel, op by op: {shift (8 bits), multiplier (32), bias (32)}
  tensors.txt    a line an op: its output's base in the activation RAM, its bytes, its instructions
  rtl.json       the same sizes for scripts, and the MACs of one image
  tb_images.bin, tb_logits.txt   the first test images (uint8 CHW, raw) and the numpy engine's logits
                 for them in the --logits format, when the dataset is a built-in one

Runs conv (any groups), linear, max pool, average pool and the residual add with fused ReLU/clamps,
weights of 2 to 8 bits (each in a byte), on any graph of them; anything else is refused in one line.  To
the engine all but max pool are convs:
  conv, linear   a group of a conv's output channels over the lanes, all sharing its input bytes: one
                 instruction whose groups are the conv's groups when a group's channels fit the lanes
                 (a depthwise conv: 1 lane of P busy), else an instruction per conv group whose groups
                 are P of its channels at a time
  avgpool        a depthwise conv of weight 1 (one lane; the kh*kw weight words shared by the channels),
                 bias 0 and the op's m, shift: sum (x - z_x) requantized, as the contract says
  add            a 1x1 conv of 2 input channels, a and b (b's plane at the offset b - a), 2 lanes of
                 weights (1, 0) and (0, 1), z_x = 0, bias -z_a and -z_b: the lanes hold a and b, which
                 drain to the same output byte as a pair that the requantizer rounds once
Tensors are placed by allocate() (below): none overlaps another alive at the same time.
"""
import json
import os

import numpy as np

from model import report
from model.fileio import ModelFileError, atomic_open

# P: MAC lanes, one weight byte each a cycle.  streamed: the weights sit in SPRAM, which no bitstream
# initialises, and arrive through s_data (else block RAM initialised from weights.hex).  weight_words:
# the most words (of P bytes) the weight memory holds; ram_bytes: the block RAM for weights and activations.
TARGETS = {
    "up5k": dict(P=8, streamed=True, weight_words=16384, ram_bytes=None),   # 4 SPRAMs of 16K x 16 bits
    "ecp5": dict(P=32, streamed=False, weight_words=65536, ram_bytes=208 * 2048),   # LFE5U-85F: 208 EBR
}
NF = 32                # fields an instruction (engine.v NF)
ACT_BYTES = 65536      # 16-bit activation addresses
TB_IMAGES = 8
FIELDS = ("kind", "in_base", "out_base", "h", "w", "cing_last", "kh_last", "kw_last", "sh", "sw", "dh", "dw", "pt", "pl",
          "oh_last", "ow_last", "groups_last", "ch_end", "hw", "gstep_in", "gstep_out", "gch", "ohw", "row_start", "sh_w", "dh_w", "wstep",
          "wbase", "pbase", "zx_zw", "zp", "qmin_qmax")
KIND_CONV, KIND_POOL, W_UNSIGNED, PAIRS = 1, 2, 1 << 8, 1 << 9
SUPPORTED = ("conv", "linear", "maxpool", "avgpool", "add")


def targets(folder, model):
    return [os.path.join(folder, f"{model}_rtl")]


def check(quant_list):
    """Refuse, in one line, what the engine cannot run."""
    for i, op in enumerate(quant_list[1:], 1):
        if op["op"] not in SUPPORTED:
            raise ModelFileError(f"rtl export: op {i} ({op['name']}) is {op['op']}: the RTL engine runs "
                                 f"{', '.join(SUPPORTED)} only")


def _size(op):
    c, h, w = op["shape"]
    return c * h * w


def allocate(quant_list):
    """(each tensor's base, the bytes they take): tensor i lives from op i to the last op that reads it;
    largest first (TFLite's greedy by size), each goes to the lowest address clear of the tensors placed
    that live while it does, so an op never writes over its inputs or a tensor still to be read."""
    last = list(range(len(quant_list)))
    for i, op in enumerate(quant_list):
        for j in op.get("inputs", []):
            last[j] = max(last[j], i)
    bases = {}
    for i in sorted(range(len(quant_list)), key=lambda i: -_size(quant_list[i])):
        base = 0
        alive = [j for j in bases if j <= last[i] and i <= last[j]]
        for lo, hi in sorted((bases[j], bases[j] + _size(quant_list[j])) for j in alive):
            if base + _size(quant_list[i]) <= lo:
                break
            base = max(base, hi)
        bases[i] = base
    bases = [bases[i] for i in range(len(quant_list))]
    return bases, max(b + _size(op) for b, op in zip(bases, quant_list))


def _fields(in_shape, out_shape, geom, bases):
    """The fields every instruction has; geom = (cing, kh, kw, sh, sw, dh, dw, pt, pl)."""
    cing, kh, kw, sh, sw, dh, dw, pt, pl = geom
    _, h, w = in_shape
    c, oh, ow = out_shape
    return dict(in_base=bases[0], out_base=bases[1], h=h, w=w, cing_last=cing - 1, kh_last=kh - 1, kw_last=kw - 1,
                sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, oh_last=oh - 1, ow_last=ow - 1, ch_end=c, hw=h * w,
                ohw=oh * ow, row_start=(-pt * w) & 0xFFFF, sh_w=sh * w, dh_w=dh * w, wstep=cing * kh * kw)


def _words(rows, blocks, P):
    """Weight words of P bytes: for each block (a list of up to P channels), tap by tap, lane l holding
    channel blocks[b][l]'s weight (rows: a channel's weights, tap order ci > ky > kx)."""
    lanes = np.zeros((len(blocks) * P, rows.shape[1]), dtype=np.int64)
    for b, block in enumerate(blocks):
        lanes[b * P:b * P + len(block)] = rows[block]
    return lanes.reshape(len(blocks), P, -1).transpose(0, 2, 1).reshape(-1, P)


def _requant(state, name):
    return (state[f"{name}.{k}"].numpy().astype(np.int64) for k in ("multiplier", "shift"))


def _channel(m, shift, bias):
    return int(shift) << 64 | int(m) << 32 | int(bias) & 0xFFFFFFFF


def _weighted(op, src, state, bases, per_tensor, P):
    """A conv or linear layer (linear: a conv whose kernel is its whole input): instructions, weight words
    (each instruction's from its wbase, 0 here), channels."""
    c_in, h, w = src["shape"]
    c, oh, ow = op["shape"]
    groups = op.get("groups", 1)
    cing, coutg = c_in // groups, c // groups
    if op["op"] == "conv":
        geom = (cing, *op["kernel"], *op["stride"], *op["dilation"], op["padding"][0], op["padding"][1])
    else:
        geom = (c_in, h, w, 1, 1, 1, 1, 0, 0)
    base = _fields(src["shape"], op["shape"], geom, bases)
    base.update(kind=KIND_CONV | (W_UNSIGNED if per_tensor else 0),
                zx_zw=src["zero_point"] | op["weight_zero_point"] << 8)
    rows = state[op["name"] + ".weight"].numpy().reshape(c, -1).astype(np.int64) & 0xFF
    if coutg <= P:         # one instruction: its groups are the conv's, coutg lanes each
        instructions = [dict(base, groups_last=groups - 1, gstep_in=cing * h * w, gstep_out=coutg * oh * ow, gch=coutg,
                             wbase=0, pbase=0)]
        blocks = [list(range(g * coutg, (g + 1) * coutg)) for g in range(groups)]
    else:                  # an instruction a conv group: its groups are P of the group's channels at a time
        n = -(-coutg // P)
        instructions = [dict(base, in_base=bases[0] + g * cing * h * w, out_base=bases[1] + g * coutg * oh * ow,
                             groups_last=n - 1, gstep_in=0, gstep_out=P * oh * ow, gch=P, ch_end=coutg,
                             wbase=g * n * base["wstep"], pbase=g * coutg) for g in range(groups)]
        blocks = [list(range(g * coutg + b * P, min(g * coutg + (b + 1) * P, (g + 1) * coutg)))
                  for g in range(groups) for b in range(n)]
    mult, shift = _requant(state, op["name"])
    bias = state[op["name"] + ".bias"].numpy().astype(np.int64)
    return instructions, _words(rows, blocks, P), [_channel(*v) for v in zip(mult, shift, bias)]


def _avgpool(op, src, bases, state, P):
    """A depthwise conv of weight 1, one lane: the window's sum of x - z_x, requantized by the op's m, shift."""
    (kh, kw), (sh, sw) = op["kernel"], op["stride"]
    c = op["shape"][0]
    f = _fields(src["shape"], op["shape"], (1, kh, kw, sh, sw, 1, 1, 0, 0), bases)
    f.update(kind=KIND_CONV, groups_last=c - 1, gstep_in=f["hw"], gstep_out=f["ohw"], gch=1, wstep=0, wbase=0, pbase=0,
             zx_zw=src["zero_point"])
    (m,), (shift,) = _requant(state, op["name"])
    return [f], _words(np.ones((1, kh * kw), dtype=np.int64), [[0]], P), [_channel(m, shift, 0)] * c


def _add(op, srcs, bases, state, P):
    """A 1x1 conv of the 2 inputs as its 2 input channels (a then b, b's plane at the offset b - a, mod
    2^16 as the addresses), the tensor read as C*H rows: lanes 0 and 1 hold a and b (weights (1, 0), (0, 1),
    z_x = 0), drained as a pair (bias -z_a, m_a; bias -z_b, m_b; one shift) to the same byte (ohw = 0)."""
    c, h, w = op["shape"]
    f = _fields((1, c * h, w), (1, c * h, w), (2, 1, 1, 1, 1, 1, 1, 0, 0), (bases[0], bases[2]))
    f.update(kind=KIND_CONV | PAIRS, hw=(bases[1] - bases[0]) & 0xFFFF, ohw=0, groups_last=0, gstep_in=0, gstep_out=0,
             gch=2, ch_end=2, wbase=0, pbase=0, zx_zw=0)
    mult, (shift,) = _requant(state, op["name"])
    return [f], _words(np.eye(2, dtype=np.int64), [[0, 1]], P), [_channel(m, shift, -src["zero_point"])
                                                                for m, src in zip(mult, srcs)]


def _maxpool(op, src, bases, P):
    """A "conv" of one channel a group whose lanes take the window's largest byte."""
    (kh, kw), (sh, sw), (ph, pw) = op["kernel"], op["stride"], op["padding"]
    f = _fields(src["shape"], op["shape"], (1, kh, kw, sh, sw, 1, 1, ph, pw), bases)
    f.update(kind=KIND_POOL, groups_last=op["shape"][0] - 1, gstep_in=f["hw"], gstep_out=f["ohw"], gch=1, wstep=0,
             wbase=0, pbase=0, zx_zw=0)
    return [f], np.zeros((0, P), dtype=np.int64), []


def _instructions(i, quant_list, state, bases, P):
    """(instructions, weight words, channels) of op i; wbase and pbase count from its own words and channels."""
    op = quant_list[i]
    srcs = [quant_list[j] for j in op["inputs"]]
    io = [bases[j] for j in op["inputs"]] + [bases[i]]
    if op["op"] == "maxpool":
        return _maxpool(op, srcs[0], io, P)
    if op["op"] == "avgpool":
        return _avgpool(op, srcs[0], io, state, P)
    if op["op"] == "add":
        return _add(op, srcs, io, state, P)
    return _weighted(op, srcs[0], state, io, quant_list[0]["weight_mode"] == "per_tensor", P)


def compile_graph(state, quant_list, target="up5k"):
    """(program words, weight words (rows of P bytes), channel entries, sizes, tensors): the engine's
    memories for `target` (a key of TARGETS); tensors: (base, bytes, instructions) of each op's output."""
    if target not in TARGETS:
        raise ModelFileError(f"rtl export: target {target!r} is not one of {', '.join(TARGETS)}")
    check(quant_list)
    P, streamed, weight_words, ram_bytes = (TARGETS[target][k] for k in ("P", "streamed", "weight_words", "ram_bytes"))
    bases, act_bytes = allocate(quant_list)
    if act_bytes > ACT_BYTES:
        i = max(range(len(quant_list)), key=lambda i: bases[i] + _size(quant_list[i]))
        raise ModelFileError(f"rtl export: op {i} ({quant_list[i]['name']}): its output and the tensors alive with it "
                             f"take {act_bytes} bytes; the RTL engine addresses {ACT_BYTES} bytes of activations")
    program, weights, channels, tensors = [], [], [], [(bases[0], _size(quant_list[0]), 0)]
    n_words = 0
    for i, op in enumerate(quant_list[1:], 1):
        instructions, words, chans = _instructions(i, quant_list, state, bases, P)
        for f in instructions:
            f.update(wbase=f["wbase"] + n_words, pbase=f["pbase"] + len(channels), zp=op["zero_point"],
                     qmin_qmax=op["qmin"] | op["qmax"] << 8)
            for name in FIELDS:
                if not 0 <= f[name] <= 0xFFFF:
                    raise ModelFileError(f"rtl export: op {i} ({op['name']}): {name} = {f[name]} does not fit 16 bits")
            program += [f[name] for name in FIELDS]
        weights.append(words)
        n_words += len(words)
        channels += chans
        tensors.append((bases[i], _size(op), len(instructions)))
    program += [0] * (NF + 1)                                # the end word, and the fetch's one word ahead
    weights = np.concatenate(weights) if n_words else np.zeros((1, P), dtype=np.int64)
    if len(weights) > weight_words:
        raise ModelFileError(f"rtl export: {len(weights)} weight words of {P} bytes; the RTL engine on {target} holds "
                             f"{weight_words}")
    if ram_bytes and weights.size + act_bytes > ram_bytes:
        raise ModelFileError(f"rtl export: {weights.size} weight bytes and {act_bytes} activation bytes; "
                             f"{target}'s block RAM holds {ram_bytes}")
    waw = 14 if streamed else max(1, (len(weights) - 1).bit_length())     # the SPRAM's 14 address bits
    sizes = dict(P=P, ADEPTH=act_bytes, WDEPTH=len(weights), WAW=waw, WEIGHTS_STREAMED=int(streamed),
                 NPROG=len(program), NCHAN=max(1, len(channels)), IN_BASE=bases[0], IN_SIZE=_size(quant_list[0]),
                 OUT_BASE=bases[-1], OUT_SIZE=_size(quant_list[-1]))
    return program, weights, channels or [0], sizes, tensors


def _write(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def write_export(state, quant_list, folder, images=None, target="up5k"):
    """Write the folder (module docstring) for `target`; `images`: uint8 N x C x H x W test images for the
    testbench files (None: none).  Returns the paths written."""
    program, weights, channels, sizes, tensors = compile_graph(state, quant_list, target)
    macs = sum(report.macs(state, op) for op in quant_list)
    out = targets(folder, quant_list[0]["model"])[0]
    os.makedirs(out, exist_ok=True)
    vh = "".join(f"localparam {k} = {v};\n" for k, v in sizes.items())
    vh += 'localparam PROGRAM_HEX = "program.hex";\nlocalparam CHANNELS_HEX = "channels.hex";\n'
    vh += 'localparam WEIGHTS_HEX = "weights.hex";\n'
    paths = [_write(os.path.join(out, "program.hex"), "".join(f"{w:04x}\n" for w in program)),
             _write(os.path.join(out, "weights.hex"), "".join("".join(f"{b:02x}" for b in row[::-1]) + "\n"
                                                              for row in weights)),
             _write(os.path.join(out, "channels.hex"), "".join(f"{c:018x}\n" for c in channels)),
             _write(os.path.join(out, "params.vh"), vh),
             _write(os.path.join(out, "tensors.txt"), "".join(f"{b} {n} {k}\n" for b, n, k in tensors)),
             _write(os.path.join(out, "rtl.json"), json.dumps(dict(sizes, MACS=macs, TARGET=target), indent=1) + "\n")]
    if images is not None:
        from model.formats.golden import layer_outputs
        images = np.asarray(images[:TB_IMAGES], dtype=np.uint8)
        logits = layer_outputs(state, quant_list, images)[-1].reshape(len(images), -1)
        with atomic_open(os.path.join(out, "tb_images.bin"), "wb") as f:
            f.write(images.tobytes())
        paths += [os.path.join(out, "tb_images.bin"),
                  _write(os.path.join(out, "tb_logits.txt"), "".join(",".join(map(str, r)) + "\n" for r in logits))]
    return paths
