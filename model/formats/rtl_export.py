"""export_quant_model.py --export_mode=rtl: the program and memory images of the generic RTL engine
(c/rtl/engine/, docs/fpga.md), compiled from the integer graph.

Writes the folder `{export_dir}/{model}_rtl/` for a target (TARGETS: its MAC lanes P and weight memory):
  params.vh      the engine's sizes (Verilog localparams, `include`d by engine.v)
  program.hex    one instruction of NF 16-bit fields per layer (FIELDS below; a count's `_last` is the
                 count less 1: the generator compares with it, no subtraction on the clock's path), then an end word
  weights.hex    WDEPTH words of P bytes (byte l, lane l, lowest): layer by layer, group g of P output
                 channels, tap k: the weight of channel g*P + l at tap k (0 past the last channel)
  channels.hex   per output channel, layer by layer: {shift (8 bits), multiplier (32), bias (32)}
  rtl.json       the same sizes for scripts, and the MACs of one image
  tb_images.bin, tb_logits.txt   the first test images (uint8 CHW, raw) and the numpy engine's logits
                 for them in the --logits format, when the dataset is a built-in one

Runs conv (groups 1), linear and max pool with fused ReLU/clamps, 8-bit weights, as a chain (op i reads
op i-1); anything else is refused in one line.  Tensors alternate between two halves of the activation
RAM: even ops at 0, odd ops above the largest even one.
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
          "oh_last", "ow_last", "groups_last", "c", "hw", "gstep_in", "gstep_out", "gch", "ohw", "row_start", "sh_w", "dh_w", "k_taps", "wbase",
          "pbase", "zx_zw", "zp", "qmin_qmax")
KIND_CONV, KIND_POOL, W_UNSIGNED = 1, 2, 1 << 8
SUPPORTED = ("conv", "linear", "maxpool")


def targets(folder, model):
    return [os.path.join(folder, f"{model}_rtl")]


def check(quant_list):
    """Refuse, in one line, what the engine cannot run."""
    for i, op in enumerate(quant_list[1:], 1):
        where = f"rtl export: op {i} ({op['name']})"
        if op["op"] not in SUPPORTED:
            raise ModelFileError(f"{where} is {op['op']}: the RTL engine runs {', '.join(SUPPORTED)} only")
        if op["inputs"] != [i - 1]:
            raise ModelFileError(f"{where} reads op {op['inputs']}: the RTL engine runs a chain (op i reads op i-1)")
        if op["op"] in ("conv", "linear") and op.get("weight_bits", 8) != 8:
            raise ModelFileError(f"{where} has {op['weight_bits']}-bit weights: the RTL engine takes 8 bits only")
        if op["op"] == "conv" and op["groups"] != 1:
            raise ModelFileError(f"{where} has groups={op['groups']}: the RTL engine runs groups=1 only")


def _size(op):
    c, h, w = op["shape"]
    return c * h * w


def _layer_fields(op, src, geom, bases):
    """The fields both kinds share; geom = (cing, kh, kw, sh, sw, dh, dw, pt, pl)."""
    cing, kh, kw, sh, sw, dh, dw, pt, pl = geom
    c_in, h, w = src["shape"]
    c, oh, ow = op["shape"]
    return dict(in_base=bases[0], out_base=bases[1], h=h, w=w, cing_last=cing - 1, kh_last=kh - 1, kw_last=kw - 1, sh=sh,
                sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, oh_last=oh - 1, ow_last=ow - 1, c=c, hw=h * w, ohw=oh * ow, row_start=(-pt * w) & 0xFFFF, sh_w=sh * w,
                dh_w=dh * w, k_taps=cing * kh * kw, zp=op["zero_point"], qmin_qmax=op["qmin"] | op["qmax"] << 8)


def _weighted(op, src, state, bases, wbase, pbase, per_tensor, P):
    """A conv or linear layer (linear: a conv whose kernel is its whole input): fields, weight words, channels."""
    c_in, h, w = src["shape"]
    if op["op"] == "conv":
        geom = (c_in, *op["kernel"], *op["stride"], *op["dilation"], op["padding"][0], op["padding"][1])
    else:
        geom = (c_in, h, w, 1, 1, 1, 1, 0, 0)
    f = _layer_fields(op, src, geom, bases)
    c, groups = op["shape"][0], -(-op["shape"][0] // P)
    weights = state[op["name"] + ".weight"].numpy().reshape(c, -1).astype(np.int64) & 0xFF
    lanes = np.zeros((groups * P, weights.shape[1]), dtype=np.int64)
    lanes[:c] = weights
    words = lanes.reshape(groups, P, -1).transpose(0, 2, 1).reshape(-1, P)     # (group, tap) rows of P lanes
    f.update(kind=KIND_CONV | (W_UNSIGNED if per_tensor else 0), groups_last=groups - 1, gstep_in=0,
             gstep_out=P * f["ohw"], gch=P, wbase=wbase, pbase=pbase,
             zx_zw=src["zero_point"] | op["weight_zero_point"] << 8)
    mult, shift, bias = (state[f"{op['name']}.{k}"].numpy().astype(np.int64) for k in ("multiplier", "shift", "bias"))
    channels = [int(s) << 64 | int(m) << 32 | int(b) & 0xFFFFFFFF for m, s, b in zip(mult, shift, bias)]
    return f, words, channels


def _maxpool(op, src, bases):
    (kh, kw), (sh, sw), (ph, pw) = op["kernel"], op["stride"], op["padding"]
    f = _layer_fields(op, src, (1, kh, kw, sh, sw, 1, 1, ph, pw), bases)
    f.update(kind=KIND_POOL, groups_last=op["shape"][0] - 1, gstep_in=f["hw"], gstep_out=f["ohw"], gch=1, wbase=0, pbase=0,
             zx_zw=0)
    return f


def compile_graph(state, quant_list, target="up5k"):
    """(program words, weight words (rows of P bytes), channel entries, sizes): the engine's memories
    for `target` (a key of TARGETS)."""
    if target not in TARGETS:
        raise ModelFileError(f"rtl export: target {target!r} is not one of {', '.join(TARGETS)}")
    check(quant_list)
    P, streamed, weight_words, ram_bytes = (TARGETS[target][k] for k in ("P", "streamed", "weight_words", "ram_bytes"))
    half = max(_size(op) for op in quant_list[0::2])
    base = [0 if i % 2 == 0 else half for i in range(len(quant_list))]
    act_bytes = half + max(_size(op) for op in quant_list[1::2])
    program, weights, channels = [], [], []
    for i, op in enumerate(quant_list[1:], 1):
        src, bases = quant_list[i - 1], (base[i - 1], base[i])
        if op["op"] == "maxpool":
            f = _maxpool(op, src, bases)
        else:
            f, words, chans = _weighted(op, src, state, bases, sum(len(w) for w in weights), len(channels),
                                       quant_list[0]["weight_mode"] == "per_tensor", P)
            weights.append(words)
            channels += chans
        for name in FIELDS:
            if not 0 <= f[name] <= 0xFFFF:
                raise ModelFileError(f"rtl export: op {i} ({op['name']}): {name} = {f[name]} does not fit 16 bits")
        program += [f[name] for name in FIELDS]
    program += [0] * (NF + 1)                                # the end word, and the fetch's one word ahead
    weights = np.concatenate(weights) if weights else np.zeros((1, P), dtype=np.int64)
    if len(weights) > weight_words or act_bytes > ACT_BYTES:
        raise ModelFileError(f"rtl export: {len(weights)} weight words of {P} bytes and {act_bytes} activation bytes; "
                             f"the RTL engine on {target} holds {weight_words} and {ACT_BYTES}")
    if ram_bytes and weights.size + act_bytes > ram_bytes:
        raise ModelFileError(f"rtl export: {weights.size} weight bytes and {act_bytes} activation bytes; "
                             f"{target}'s block RAM holds {ram_bytes}")
    waw = 14 if streamed else max(1, (len(weights) - 1).bit_length())     # the SPRAM's 14 address bits
    sizes = dict(P=P, ADEPTH=act_bytes, WDEPTH=len(weights), WAW=waw, WEIGHTS_STREAMED=int(streamed),
                 NPROG=len(program), NCHAN=max(1, len(channels)), IN_SIZE=_size(quant_list[0]), OUT_BASE=base[-1],
                 OUT_SIZE=_size(quant_list[-1]))
    return program, weights, channels or [0], sizes


def _write(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def write_export(state, quant_list, folder, images=None, target="up5k"):
    """Write the folder (module docstring) for `target`; `images`: uint8 N x C x H x W test images for the
    testbench files (None: none).  Returns the paths written."""
    program, weights, channels, sizes = compile_graph(state, quant_list, target)
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
