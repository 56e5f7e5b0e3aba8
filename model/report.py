"""The per-layer report of an integer graph (`export_quant_model.py --report=PATH.json`): per op its
MACs, weight / bias / activation bytes, the activation bytes live while it runs, the accumulator
bits its proven bound needs, its multiplier bits, its weight SQNR, and the SQNR of its integer output
against the float model's tensor at the same point, on calibration images.

    from model import report
    rep = report.layer_report(state, quant_list, float_net, images)   # images: uint8 N×C×H×W (or None)
    print(report.table(rep)); report.write(rep, "lenet_report.json")  # + lenet_report.png

Which float tensor an op stands for: the float model is traced and folded as the quantizer does
(symbolic_trace, the input normalisation, BN folding, zero-pad folding) and each op is matched, in
graph order, to the node whose name the quantizer would have given it (a call_module target with
dots as underscores, else the node name, `_1`, `_2` ... when taken); an op that requantizes (or is
a lookup table) and whose node's only reader is a ReLU / ReLU6 fused that activation, so the
activation's output is the op's. An op left unmatched gets a null activation SQNR and a note.
"""
import math
import os

import numpy as np
import torch
import torch.fx as fx
from torch.fx.experimental.optimization import fuse as fold_bn

from model.api import float_model
from model.engines.np_engine import numpy_graph, run_numpy
from model.fileio import atomic_open, error_line
from model.formats.export_format import arena_bytes, packed_bytes
from model.graph import last_readers
from model.ops import KINDS
from model.ops.base import keeps_qparams
from model.ops.weighted import accumulator_bound
from model.quant import graph_passes
from model.quant.quantize import _holds_tensor, _role

REPORT_IMAGES = 64          # calibration images the activation SQNR is measured on
BATCH = 16                  # images per float / integer pass (bounds the memory of the int64 tensors)


# --- sizes ------------------------------------------------------------------------------------------

def activation_bytes(op):
    """Bytes of op's output tensor: uint8, one byte per element."""
    return int(np.prod(op["shape"]))


def macs(state, op):
    """Multiply-accumulates of one image: conv C_out*H_out*W_out*(C_in/groups)*kh*kw, linear C_out*K, else 0."""
    if op["op"] == "conv":
        return int(state[op["name"] + ".weight"].numel()) * op["shape"][1] * op["shape"][2]
    if op["op"] == "linear":
        return int(state[op["name"] + ".weight"].numel())
    return 0


def live_bytes(quant_list):
    """live[i]: bytes of the tensors alive while op i runs: every tensor j <= i still read by op i or later
    (its inputs among them) plus its own output."""
    last, size = last_readers([op["inputs"] for op in quant_list]), [activation_bytes(op) for op in quant_list]
    return [sum(size[j] for j in range(i + 1) if last[j] >= i) for i in range(len(quant_list))]


def signed_bits(magnitude):
    """Bits of a two's-complement integer holding -magnitude..magnitude."""
    return int(magnitude).bit_length() + 1


# --- the float tensor of each op --------------------------------------------------------------------

def folded_float_graph(net, channels):
    """The float graph the quantizer reads: traced, the input normalisation folded into one affine
    module, BN folded into the convs, zero pads folded into the convs reading them."""
    traced = fx.symbolic_trace(net.eval().float())
    graph_passes.fold_input_normalisation(traced, int(channels))
    gm = fold_bn(traced)
    graph_passes.fold_zero_padding(gm)
    return gm.eval()


class _Recorder(fx.Interpreter):
    """Runs the folded float graph; keeps the outputs of the nodes in `keep` and notes the nodes that
    yield no tensor (sizes feeding reshapes: not readers, as the quantizer counts them)."""

    def __init__(self, gm, keep=()):
        super().__init__(gm)
        self.keep, self.values, self.meta = set(keep), {}, set()

    def run_node(self, n):
        out = super().run_node(n)
        if not _holds_tensor(out):
            self.meta.add(n.name)
        if n in self.keep:
            self.values[n] = out.detach()
        return out


def _unique(base, taken):
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def match_ops(gm, quant_list, meta=()):
    """[fx node whose float output op i stands for, or None] and {i: why not}, by the quantizer's naming
    in graph order (module docstring)."""
    nodes = list(gm.graph.nodes)
    readers = {n: [u for u in n.users if u.name not in meta] for n in nodes}
    found, why, pos, fused, taken = [], {}, 0, set(), set()
    for i, op in enumerate(quant_list):
        node = None
        if op["op"] == "input":
            node = next((n for n in nodes if n.op == "placeholder"), None)
        else:
            for j in range(pos, len(nodes)):
                n = nodes[j]
                if n in fused or n.op not in ("call_module", "call_function", "call_method"):
                    continue
                base = n.target.replace(".", "_") if n.op == "call_module" else n.name
                if _unique(base, taken) == op["name"]:
                    node, pos = n, j + 1
                    break
        taken.add(op["name"])
        if node is None:
            found.append(None)
            why[i] = f"no node of the float graph is named '{op['name']}' after op {i - 1}"
            continue
        if op["op"] != "input" and not keeps_qparams(KINDS[op["op"]]) and len(readers[node]) == 1 \
                and _role(gm, readers[node][0]) in ("relu", "relu6"):
            node = readers[node][0]             # its ReLU / ReLU6 fused: the activation's output is the op's
            fused.add(node)
        found.append(node)
    return found, why


# --- the report -------------------------------------------------------------------------------------

def _sqnr_db(signal, noise):
    if signal == 0:
        return None, "the float tensor is all zero"
    if noise == 0:
        return None, "no quantization noise (integer output equals the float tensor)"
    return float(10 * math.log10(signal / noise)), None


def activation_sqnr(state, quant_list, net, images, batch=BATCH):
    """({op index: SQNR dB or None}, {op index: note}, [unmatched op indices]): each op's integer output
    (numpy engine, the specification) dequantized, s*(q - z), against the float model's tensor at the
    same point: 10 log10(sum f^2 / sum (f - s*(q - z))^2) over every element of every image. The input
    op is the raw pixels at scale 1/255, exact by construction: null, with a note."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    gm = folded_float_graph(net, x.shape[1])
    probe = _Recorder(gm)
    with torch.no_grad():
        probe.run(x[:1].float() / 255.0)
    nodes, notes = match_ops(gm, quant_list, probe.meta)
    unmatched = sorted(notes)
    graph = numpy_graph(state, quant_list)
    signal, noise = np.zeros(len(graph.ops)), np.zeros(len(graph.ops))
    recorder = _Recorder(gm, [n for n in nodes if n is not None])
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        recorder.values = {}
        with torch.no_grad():
            recorder.run(xb.float() / 255.0)
        for i, (op, q) in enumerate(graph.walk(xb.numpy(), run_numpy)):
            if op.kind == "input":
                notes[i] = "the input: the raw pixels, exact (scale 1/255, zero point 0)"
            if nodes[i] is None or i in notes:
                continue
            f = recorder.values.pop(nodes[i])
            if not isinstance(f, torch.Tensor) or f.numel() != q.size:
                notes[i] = (f"the float tensor at node '{nodes[i].name}' has shape "
                            f"{list(getattr(f, 'shape', []))}, the op's output {list(q.shape)}")
                unmatched.append(i)
                continue
            f = f.double().reshape(len(xb), -1).numpy()
            d = op.scale * (q.reshape(len(xb), -1) - op.zero_point).astype(np.float64)
            signal[i] += float((f * f).sum())
            noise[i] += float(((f - d) ** 2).sum())
        del recorder.values
    sqnr = {}
    for i in range(len(graph.ops)):
        if i in notes:
            sqnr[i] = None
            continue
        sqnr[i], note = _sqnr_db(signal[i], noise[i])
        if note:
            notes[i] = note
    return sqnr, notes, sorted(unmatched)


def layer_report(state, quant_list, net=None, images=None, note=None):
    """The report (a JSON-ready dict) of an integer graph. net: the float nn.Module the graph was
    quantized from (the normalisation the tuple records is put in front of it here), images: uint8
    N×C×H×W calibration images; without either the activation SQNRs are null, `note` says why."""
    head = quant_list[0]
    live = live_bytes(quant_list)
    measured = net is not None and images is not None and len(images) > 0
    note = None if measured else (note or "no float model or calibration images")
    if measured:
        fnet = float_model(net, head.get("input_mean"), head.get("input_std"), head["shape"][0])
        try:
            sqnr, notes, unmatched = activation_sqnr(state, quant_list, fnet, images)
            n_images = int(len(images))
        except Exception as err:            # the rest of the report stands without the float comparison
            measured, note = False, f"the float model could not be compared ({error_line(err)})"
    if not measured:
        sqnr, n_images, unmatched = {}, 0, []
        notes = {i: note for i in range(len(quant_list))}
    rows = []
    for i, op in enumerate(quant_list):
        name = op["name"]
        weight = state.get(name + ".weight")
        bias = state.get(name + ".bias")
        mult = state.get(name + ".multiplier")
        bound = None
        if KINDS[op["op"]].weighted:
            bound = accumulator_bound(weight.numpy(), op["weight_zero_point"], bias.numpy(),
                                      quant_list[op["inputs"][0]])
        rows.append({
            "index": i, "name": name, "kind": op["op"], "inputs": list(op["inputs"]), "shape": list(op["shape"]),
            "macs": macs(state, op), "weight_bits": op.get("weight_bits"), "act_bits": op.get("act_bits", 8),
            "weight_bytes": packed_bytes(weight.numel(), op["weight_bits"]) if weight is not None else 0,
            "bias_bytes": int(bias.numel() * 4) if bias is not None else 0,
            "activation_bytes": activation_bytes(op), "live_activation_bytes": live[i],
            "acc_bound": bound, "acc_bits": signed_bits(bound) if bound is not None else None,
            "multiplier_bits": signed_bits(int(mult.abs().max())) if mult is not None and mult.numel() else None,
            "weight_sqnr_db": op.get("weight_sqnr_db"),
            "activation_sqnr_db": sqnr.get(i),
            **({"activation_sqnr_note": notes[i]} if i in notes else {}),
            **({"weight_sqnr_note": "exact: no weight quantization noise (JSON null for infinity)"}
               if op.get("weight_sqnr_db") == float("inf") else {}),
        })
    peak = max(range(len(rows)), key=lambda i: rows[i]["live_activation_bytes"])
    act = [r["activation_sqnr_db"] for r in rows if r["activation_sqnr_db"] is not None]
    wsq = [r["weight_sqnr_db"] for r in rows if r["weight_sqnr_db"] is not None and math.isfinite(r["weight_sqnr_db"])]
    return {
        "model": head.get("model"), "dataset": head.get("dataset"), "weight_mode": head.get("weight_mode"),
        "multiplier_bits": head.get("multiplier_bits"), "widths": head.get("widths", {}), "sqnr_images": n_images,
        **({"sqnr_note": note} if note else {}),
        "ops": rows,
        "totals": {"macs": sum(r["macs"] for r in rows), "weight_bytes": sum(r["weight_bytes"] for r in rows),
                   "bias_bytes": sum(r["bias_bytes"] for r in rows),
                   "peak_live_activation_bytes": rows[peak]["live_activation_bytes"], "peak_live_op": peak,
                   "arena_bytes": arena_bytes(quant_list),
                   "acc_bits": max((r["acc_bits"] for r in rows if r["acc_bits"] is not None), default=None),
                   "multiplier_bits": max((r["multiplier_bits"] for r in rows if r["multiplier_bits"] is not None),
                                          default=None),
                   "weight_sqnr_db_median": float(np.median(wsq)) if wsq else None,
                   "activation_sqnr_db_median": float(np.median(act)) if act else None,
                   "activation_sqnr_db_last": rows[-1]["activation_sqnr_db"],
                   "unmatched_ops": unmatched},
    }


# --- output -----------------------------------------------------------------------------------------

def _num(v, fmt="{:,}"):
    return "-" if v is None else fmt.format(v)


def table(rep):
    """The printed table: a header, one row per op (starting with its index), a totals row."""
    head = (f"{'#':>3} {'name':<22} {'kind':<8} {'shape':<12} {'bits':<5} {'MACs':>12} {'weight B':>10} {'bias B':>8} "
            f"{'act B':>9} {'live B':>9} {'acc b':>5} {'mul b':>5} {'W SQNR':>7} {'A SQNR':>7}")
    lines = [head]
    for r in rep["ops"]:
        bits = (f"W{r['weight_bits']}" if r["weight_bits"] else "") + f"A{r['act_bits']}"
        lines.append(f"{r['index']:>3} {r['name'][:22]:<22} {r['kind']:<8} {'x'.join(map(str, r['shape'])):<12} "
                     f"{bits:<5} {r['macs']:>12,} {r['weight_bytes']:>10,} {r['bias_bytes']:>8,} {r['activation_bytes']:>9,} "
                     f"{r['live_activation_bytes']:>9,} {_num(r['acc_bits'], '{}'):>5} "
                     f"{_num(r['multiplier_bits'], '{}'):>5} {_num(r['weight_sqnr_db'], '{:.1f}'):>7} "
                     f"{_num(r['activation_sqnr_db'], '{:.1f}'):>7}")
    t = rep["totals"]
    lines.append(f"{'':>3} {'total':<22} {'':<8} {'':<12} {'':<5} {t['macs']:>12,} {t['weight_bytes']:>10,} "
                 f"{t['bias_bytes']:>8,} {'':>9} {t['peak_live_activation_bytes']:>9,} "
                 f"{_num(t['acc_bits'], '{}'):>5} {_num(t['multiplier_bits'], '{}'):>5}")
    lines.append(f"peak live activations {t['peak_live_activation_bytes']:,} B at op {t['peak_live_op']} "
                 f"({rep['ops'][t['peak_live_op']]['name']}); C engine arena {t['arena_bytes']:,} B")
    if rep["sqnr_images"]:
        lines.append(f"activation SQNR (integer vs float) on {rep['sqnr_images']} calibration images: median "
                     f"{_num(t['activation_sqnr_db_median'], '{:.1f} dB')}, logits "
                     f"{_num(t['activation_sqnr_db_last'], '{:.1f} dB')}")
    else:
        lines.append(f"activation SQNR not measured: {rep.get('sqnr_note')}")
    for r in rep["ops"]:
        if r["index"] in rep["totals"]["unmatched_ops"]:
            lines.append(f"op {r['index']} ({r['name']}): activation SQNR null: {r['activation_sqnr_note']}")
    return "\n".join(lines)


def png_path(json_path):
    """The plot's path beside the JSON (PATH with .png), or None when the JSON goes to stdout or a device."""
    path = os.fspath(json_path)
    if path == "-" or path.startswith("/dev/"):
        return None
    try:
        if not os.path.isfile(path) and os.path.exists(path):
            return None
    except OSError:
        return None
    return os.path.splitext(path)[0] + ".png"


def plot(rep, path):
    """A PNG of the report: MACs and weight bytes per op, live activation bytes, weight and activation SQNR."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["ops"]
    idx = np.arange(len(rows))
    labels = [f"{r['index']} {r['name'][:18]}" for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.28 * len(rows) + 3), 10), sharex=True)
    ax = axes[0]
    ax.bar(idx - 0.2, [r["macs"] for r in rows], 0.4, label="MACs")
    ax.bar(idx + 0.2, [r["weight_bytes"] for r in rows], 0.4, label="weight bytes")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_title(f"{rep['model']} ({rep['weight_mode']}): {rep['totals']['macs']:,} MACs, "
                 f"{rep['totals']['weight_bytes']:,} weight bytes")
    ax.legend(loc="upper right")
    ax = axes[1]
    ax.bar(idx, [r["live_activation_bytes"] for r in rows], 0.6, color="tab:green", label="live activation bytes")
    ax.plot(idx, [r["activation_bytes"] for r in rows], "k.", label="output bytes")
    ax.set_title(f"peak live activations {rep['totals']['peak_live_activation_bytes']:,} B, "
                 f"C arena {rep['totals']['arena_bytes']:,} B")
    ax.legend(loc="upper right")
    ax = axes[2]
    for key, style, label in (("weight_sqnr_db", "o", "weight SQNR"), ("activation_sqnr_db", "s-", "activation SQNR")):
        pts = [(i, r[key]) for i, r in enumerate(rows) if r[key] is not None and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_ylabel("dB")
    ax.set_title(f"SQNR (activations: integer vs float on {rep['sqnr_images']} calibration images)")
    ax.legend(loc="lower left")
    ax.grid(True, alpha=0.3)
    ax.set_xticks(idx)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _finite(value):
    """JSON has no inf / nan: such a float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(rep, path):
    """Write the report as JSON to `path` (atomic_open's rule) and the PNG beside it; returns the paths written."""
    import json

    rep = _finite(rep)
    head = json.dumps({k: v for k, v in rep.items() if k != "ops"}, indent=1)      # one line an op
    ops = ",\n  ".join(json.dumps(r) for r in rep["ops"])
    with atomic_open(path, "w") as f:
        f.write(f'{head[:-2]},\n "ops": [\n  {ops}\n ]\n}}\n')
    written = [os.fspath(path)]
    png = png_path(path)
    if png:
        written.append(plot(rep, png))
    return written
