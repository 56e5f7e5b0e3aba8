"""Every table of figures in README.md and docs/*.md, regenerated from the results files.

  python docs/tables.py           rewrite the generated parts of README.md and docs/*.md (make docs)
  python docs/tables.py --check   rewrite nothing; exit 1 naming each file and table that differs
                                  from what its results files give (tests/test_docs.py runs it)
  --root DIR                      the checkout to work on (default: the one holding this script)

A generated table sits between two marker comments, on lines of their own:

  <!-- table:NAME -->
  | ... the table, rewritten by this script ... |
  <!-- /table -->

and a figure quoted in prose between `<!-- fig:NAME -->` and `<!-- /fig -->` on one line. Only the
text between the markers is rewritten; everything else in the file is left as it is. NAME is one
of TABLES or FIGURES below; an unknown NAME is an error.

The results files (paths relative to the checkout):
  results/{model}_{mode}.json          test_model.py --json: accuracy, identical logits, seconds
  results/reports/{model}_{mode}.json  export_quant_model.py --report: MACs, bytes, SQNR per op
  benchmarks/results/{model}.json      make bench MODEL=...: images/s of C and its peers
  results/timings.json                 the quick start's and the tests' wall-clock times
  results/demo_summary.txt             make demo's summary table (tools/timings.py writes both)
  pretrained/{model}_raw.pth           the shipped checkpoints' headers (epochs, device, seconds)
  results/firmware_lenet.json          the LeNet firmware's flash and RAM (make -C c mcu-size)
  export_model/lenet_*                 the shipped LeNet export (file sizes)
"""
import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("lenet", "resnet18", "mobilenet_v2", "vgg13")        # the shipped models, in this order
MODES = ("per_channel", "per_tensor")
MODE_NAMES = {"per_channel": "per-channel int8", "per_tensor": "per-tensor uint8"}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "custom": "custom"}
COLUMNS = (("raw", "raw"), ("quant", "quant"), ("np_quant", "np quant"), ("c_int8", "C INT8"))
CELLS = (("batch1_threads1", "b1, 1 thread"), ("batch1_threads2", "b1, 2 threads"),
         ("batch32_threads1", "b32, 1 thread"), ("batch32_threads2", "b32, 2 threads"))
TIMINGS = "results/timings.json"
BENCH = "benchmarks/results"                 # make bench's files; BENCH_W7 the same at 7-bit weights
BENCH_W7 = "benchmarks/results/w7"
BLOCK = re.compile(r"^<!-- table:([a-z0-9_]+) -->\n(.*?)^<!-- /table -->$", re.M | re.S)
INLINE = re.compile(r"<!-- fig:([a-z0-9_]+) -->(.*?)<!-- /fig -->")


class DocsError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# the results files
# ---------------------------------------------------------------------------------------------

class Results:
    """The results files of one checkout, each read once, when a table first needs it."""

    def __init__(self, root):
        self.root = root
        self._cache = {}

    def path(self, rel):
        return os.path.join(self.root, rel)

    def json(self, rel, required=True):
        if rel not in self._cache:
            try:
                with open(self.path(rel)) as f:
                    self._cache[rel] = json.load(f)
            except FileNotFoundError:
                if required:
                    raise DocsError(f"{rel}: missing") from None
                self._cache[rel] = None
            except (OSError, ValueError) as err:
                raise DocsError(f"{rel}: {err}") from None
        return self._cache[rel]

    def models(self, pattern):
        """The models that have a file matching pattern ('{m}' the model), shipped ones first."""
        found = set()
        regex = re.compile("^" + re.escape(pattern).replace(re.escape("{m}"), "(.+)") + "$")
        for p in glob.glob(self.path(pattern.replace("{m}", "*"))):
            m = regex.match(os.path.relpath(p, self.root).replace(os.sep, "/"))
            if m:
                found.add(m.group(1))
        return [m for m in MODELS if m in found] + sorted(found - set(MODELS))

    def test_report(self, model, mode):
        return self.json(f"results/{model}_{mode}.json", required=False)

    def layer_report(self, model, mode):
        return self.json(f"results/reports/{model}_{mode}.json", required=False)

    def bench(self, model, folder=BENCH):
        return self.json(f"{folder}/{model}.json")

    def bench_models(self, folder=BENCH):
        return self.models(folder + "/{m}.json")

    def checkpoint_header(self, model):
        rel = f"pretrained/{model}_raw.pth"
        if ("ckpt", rel) not in self._cache:
            try:
                import torch
                self._cache[("ckpt", rel)] = torch.load(self.path(rel), map_location="cpu",
                                                         weights_only=True)["header"]
            except FileNotFoundError:
                self._cache[("ckpt", rel)] = None
            except Exception as err:            # an unreadable checkpoint: name it
                raise DocsError(f"{rel}: {err.__class__.__name__}: {err}") from None
        return self._cache[("ckpt", rel)]

    def file_size(self, rel):
        try:
            return os.path.getsize(self.path(rel))
        except OSError:
            raise DocsError(f"{rel}: missing") from None


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------

def pct(x, digits=2):
    return f"{100 * x:.{digits}f}%"


def num(x):
    return f"{round(x):,}"


def ratio(x):
    return f"{x:.2f}x"


def duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def mbytes(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:,} B"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------------------------------------
# the tables: each a function of the results, returning its lines
# ---------------------------------------------------------------------------------------------

def t_timings(r):
    """results/timings.json: every command timed, with its condition and the machine."""
    data = r.json(TIMINGS, required=False)
    if data is None:
        return ["| command | condition | wall-clock time |", "|---|---|---|",
                "| (not measured yet) | `results/timings.json` is missing | |"]
    rows = [(f"`{t['command']}`", t.get("condition", ""), duration(float(t["seconds"])))
            for t in data["timings"]]
    return table(("command", "condition", "wall-clock time"), rows) + [
        "", f"Measured on {data['cpu']}, {data['date']} (`{TIMINGS}`)."]


def t_accuracy(r):
    """results/{model}_{mode}.json: the four columns on the full test sets."""
    rows = []
    for model in r.models("results/{m}_per_channel.json"):
        for mode in MODES:
            d = r.test_report(model, mode)
            if d is None:
                continue
            acc = d["accuracy"]
            same = d.get("identical_logits", {})
            n = d["images"]
            agree = " / ".join(f"{round(same[k] * n):,}" if k in same else "-"
                               for k in ("quant_vs_np_quant", "np_quant_vs_c_int8"))
            rows.append((model, MODE_NAMES[mode], DATASET_NAMES.get(d["dataset"], d["dataset"]), f"{n:,}",
                         *(pct(acc[k]) if k in acc else "-" for k, _ in COLUMNS), agree))
    return table(("model", "weights", "dataset", "test images", *(t for _, t in COLUMNS),
                  "identical logits: quant = np / np = C"), rows)


def t_test_seconds(r):
    """results/{model}_per_channel.json: each column's seconds over the test set."""
    rows = []
    for model in r.models("results/{m}_per_channel.json"):
        d = r.test_report(model, "per_channel")
        sec = d["seconds"]
        rows.append((model, f"{d['images']:,}", *(f"{sec[k]:.2f} s" if k in sec else "-" for k, _ in COLUMNS),
                     num(d["images"] / sec["c_int8"]) if sec.get("c_int8") else "-"))
    return table(("model", "images", *(t for _, t in COLUMNS), "C INT8 images/s"), rows)


def low_bit_results(r):
    """{(model, weight bits, act bits, methods): results/low_bit/{model}_w{W}a{A}[_{variant}].json},
    shipped models first, the post-training defaults ("auto") before the variants."""
    found = {}
    for path in glob.glob(r.path("results/low_bit/*.json")):
        d = r.json(os.path.relpath(path, r.root).replace(os.sep, "/"))
        found[(d["model"], d["weight_bits"], d["act_bits"], methods_label(d))] = d
    return dict(sorted(found.items(), key=lambda kv: (width_order(kv[0][:3]), kv[0][3] != "auto", kv[0][3])))


def methods_label(d):
    """What a low-bit run added to the post-training defaults: its bias correction, the first and last
    layers kept at 8-bit weights, its QAT epochs. Every row names its bias correction: a missing one
    no longer means the default (auto was `on` below 8 bits until commit 832490d)."""
    label = d["bias_correction"] + (", ends W8" if d.get("ends_at_8") else "")
    epochs = d.get("qat_epochs", 0)
    distill = ", distilled" if d.get("qat_loss") == "distill" else ""
    return label + (f" + QAT {epochs} epoch{'s' * (epochs > 1)} (lr {d['qat_lr']:g}{distill})" if epochs else "")


def width_order(key):
    """(model, weight bits, act bits) in table order: the shipped models first, wider before narrower."""
    model, weight_bits, act_bits = key
    return (MODELS.index(model) if model in MODELS else len(MODELS), model, -weight_bits, -act_bits)


def points(x, reference):
    return f"{100 * x:.2f} ({100 * (x - reference):+.2f})"


def t_low_bit(r):
    """results/low_bit/*.json (benchmarks/low_bit_accuracy.py): the low-bit widths on the full test set;
    the numpy column on the first images only where the run said so (--numpy_on_peer_images)."""
    rows = []
    for (model, w, a, methods), d in low_bit_results(r).items():
        t = d["test"]
        acc, n = t["accuracy"], t["images"]
        if "np_quant" in acc:
            numpy_cell, same = points(acc["np_quant"], acc["raw"]), f"{round(t['identical_logits']['np_quant_vs_c_int8'] * n):,}"
        else:
            p = d["peer_work"]
            numpy_cell = f"{points(p['np_quant'], p['float'])} on the first {p['images']:,}"
            same = f"{round(p['identical_logits']['np_quant_vs_c_int8'] * p['images']):,} of the first {p['images']:,}"
        rows.append((model, f"W{w}A{a}", methods, f"{n:,}", pct(acc["raw"]), numpy_cell, points(acc["c_int8"], acc["raw"]),
                     same, duration(d["seconds_quantize"])))
    return table(("model", "bits", "methods", "test images", "float", "numpy (change)", "C (change)",
                  "identical logits np = C", "quantize time"), rows)


def t_low_bit_peer(r):
    """results/low_bit/*.json beside results/peers/brevitas.json, on the peer's test images (the same
    checkpoints, the same 512 calibration images): a peer row on the first 2,000 beside FPGAI's
    peer_work, one on all 10,000 beside its full test."""
    peer = {(row["model"], row["weight_bits"], row["act_bits"], row["test_images"], row["method"]): row
            for row in r.json("results/peers/brevitas.json")["rows"]}
    ours = {key[:3]: d for key, d in low_bit_results(r).items() if key[3] == "auto"}

    def our_work(key, images):
        d = ours.get(key)
        if d is None:
            return None
        if d["peer_work"]["images"] == images:
            return d["peer_work"]["c_int8"], d["peer_work"]["float"]
        return (d["test"]["accuracy"]["c_int8"], d["test"]["accuracy"]["raw"]) if d["test"]["images"] == images else None

    most_images = {}                         # per model the peer ran, the most test images it ran on
    for model, _, _, images, _ in peer:
        most_images[model] = max(images, most_images.get(model, 0))
    keys = {k[:4] for k in peer} | {(*k, most_images[k[0]]) for k in ours if k[0] in most_images}
    rows = []
    for model, w, a, images in sorted(keys, key=lambda k: (width_order(k[:3]), k[3])):
        cells = []
        for method in ("gptq+bias_correction", "rtn+bias_correction"):
            row = peer.get((model, w, a, images, method))
            cells.append(points(row["quant_accuracy"] / 100, row["float_accuracy"] / 100) if row else "not run")
        mine = our_work((model, w, a), images)
        cells.append(points(*mine) if mine else "not run")
        float_accuracy = mine[1] if mine else next(
            row["float_accuracy"] / 100 for key, row in peer.items() if key[:4] == (model, w, a, images))
        rows.append((model, f"W{w}A{a}", f"{images:,}", pct(float_accuracy), *cells))
    return table(("model", "bits", "test images", "float", "Brevitas GPTQ + BC", "Brevitas RTN + BC",
                  "FPGAI (auto: GPTQ + empirical BC)"), rows)


def t_test_json(r):
    """results/lenet_per_channel.json, as an example of test_model.py --json (seconds rounded)."""
    d = r.test_report("lenet", "per_channel")
    if d is None:
        raise DocsError("results/lenet_per_channel.json: missing")
    sec = {k: round(v, 3) for k, v in d["seconds"].items()}
    head = {k: d[k] for k in d if k not in ("accuracy", "identical_logits", "seconds")}
    lines = ["```json", json.dumps(head)[:-1] + ","]
    lines += [f' "{k}": {json.dumps(v)},' for k, v in (("accuracy", d["accuracy"]),
                                                       ("identical_logits", d["identical_logits"]))]
    return lines + [f' "seconds": {json.dumps(sec)}}}', "```"]


def t_checkpoints(r):
    """pretrained/{model}_raw.pth headers: how each shipped checkpoint was trained."""
    rows = []
    for model in MODELS:
        h = r.checkpoint_header(model)
        if h is None:
            continue
        device = {"cpu": "CPU", "cuda": "CUDA GPU"}.get(h.get("device"), h.get("device", "?"))
        if h.get("amp"):
            device += ", bf16"
        rows.append((model, h["epochs"], h["epoch"], pct(h["val_acc"]), device, duration(h["train_seconds"])))
    return table(("model", "epochs run", "best epoch (shipped)", "validation accuracy", "device",
                  "training time to the best epoch"), rows)


def t_weight_sqnr(r):
    """results/reports/{model}_{mode}.json: the weights' SQNR per model and weight mode."""
    rows = []
    for model in r.models("results/reports/{m}_per_channel.json"):
        cells = []
        for mode in MODES:
            d = r.layer_report(model, mode)
            if d is None:
                cells += ["-", "-"]
                continue
            ops = [op for op in d["ops"] if op.get("weight_sqnr_db") is not None]
            worst = min(ops, key=lambda op: op["weight_sqnr_db"])
            cells += [f"{d['totals']['weight_sqnr_db_median']:.1f} dB",
                      f"{worst['weight_sqnr_db']:.1f} dB (`{worst['name']}`)"]
        rows.append((model, *cells))
    return table(("model", "per-channel: median", "per-channel: worst layer", "per-tensor: median",
                  "per-tensor: worst layer"), rows)


def t_report(r):
    """results/reports/{model}_per_channel.json: the per-layer report's totals."""
    rows = []
    for model in r.models("results/reports/{m}_per_channel.json"):
        d = r.layer_report(model, "per_channel")
        t = d["totals"]
        ops = [op for op in d["ops"] if op.get("activation_sqnr_db") is not None and op["index"] > 0]
        worst = min(ops, key=lambda op: op["activation_sqnr_db"]) if ops else None
        macs = f"{t['macs'] / 1e6:.1f} M" if t["macs"] >= 1e7 else f"{t['macs']:,}"
        sqnr = (f"{t['activation_sqnr_db_median']:.1f} / {worst['activation_sqnr_db']:.1f} (`{worst['name']}`) / "
                f"{t['activation_sqnr_db_last']:.1f} dB" if worst else "-")
        widest = max((op for op in d["ops"] if op.get("acc_bits")), key=lambda op: op["acc_bits"])
        rows.append((model, macs, mbytes(t["weight_bytes"]),
                     f"{t['peak_live_activation_bytes']:,} / {t['arena_bytes']:,} B",
                     f"{widest['acc_bits']} (`{widest['name']}`)", sqnr))
    return table(("model (per-channel)", "MACs", "weight bytes", "peak live / C arena",
                  "accumulator bits (most)", "activation SQNR: median / worst op / logits"), rows)


def bench_caption(r, folder=BENCH):
    # the C engine's best build there (c_isa's 1.00x) says what the CPU had, where "machine" names no ISA
    runs = [r.bench(m, folder) for m in r.bench_models(folder)]
    machines = sorted({d.get("machine", "?") + "".join(
        f", the C engine's best build {isa}" for isa, cell in d.get("c_isa", {}).items()
        if cell.get("ratio_to_best") == 1.0 and "AVX" not in d.get("machine", "")) for d in runs})
    images = sorted({d["images"] for d in runs})
    return (f"Measured by `benchmarks/bench_inference.py` (`make bench`) on {', '.join(machines)}; {', '.join(f'{i:,}' for i in images)} "
            f"test images, shipped checkpoints (`{folder}/*.json`).")


def t_speed_summary(r):
    """benchmarks/results/{model}.json: batch 1 on one thread, and the best cell."""
    rows = []
    for model in r.bench_models():
        d = r.bench(model)
        c = d["batch1_threads1"]
        ips = c["images_per_s"]
        b32 = d["batch32_threads2"]["images_per_s"]["c_int8"]
        rows.append((model, num(ips["c_int8"]), num(ips["torch_int8"]), num(ips["ort_int8"]),
                     ratio(c["c_ratio_to_best_peer"]), num(b32)))
    return table(("model", "C INT8 img/s (batch 1, 1 thread)", "PyTorch INT8", "ONNX Runtime INT8",
                  "C / best peer", "C img/s (batch 32, 2 threads)"), rows) + ["", bench_caption(r)]


def t_bench_cells(r, folder=BENCH):
    """{folder}/{model}.json: the four cells, C / torch INT8 / ORT INT8 (C / best peer)."""
    rows = []
    for model in r.bench_models(folder):
        d = r.bench(model, folder)
        cells = []
        for key, _ in CELLS:
            ips = d[key]["images_per_s"]
            cells.append(f"{num(ips['c_int8'])} / {num(ips['torch_int8'])} / {num(ips['ort_int8'])} "
                         f"({ratio(d[key]['c_ratio_to_best_peer'])})")
        rows.append((model, *cells))
    return table(("model", *(t for _, t in CELLS)), rows) + ["", bench_caption(r, folder)]


def t_bench_single(r):
    """benchmarks/results/{model}.json: batch 1, one thread, every engine; GMAC/s and memory."""
    rows = []
    for model in r.bench_models():
        d = r.bench(model)
        ips = d["batch1_threads1"]["images_per_s"]
        peak = d.get("peak_gmac_per_s")
        gmac = f"{d['c_gmac_per_s']:.0f}" + (f" ({100 * d['c_gmac_per_s'] / peak:.0f}% of {peak:.0f})" if peak else "")
        acc = d["accuracy"]
        rows.append((model, num(ips["c_int8"]), num(ips["torch_fp32"]), num(ips["torch_int8"]), num(ips["ort_int8"]),
                     gmac, f"{d['c_peak_rss_mb']:.1f} MB ({d['c_memory_budget_mb']:.1f})",
                     " / ".join(pct(acc[k], 1) for k in ("c_int8", "torch_fp32", "torch_int8", "ort_int8"))))
    return table(("model", "C INT8", "PyTorch fp32", "PyTorch INT8", "ORT INT8", "C GMAC/s (of the peak)",
                  "C peak RSS (budget)", "accuracy: C / fp32 / torch INT8 / ORT"), rows)


def t_bench_isa(r):
    """benchmarks/results/{model}.json c_isa: each forced build against the best, batch 1, one thread."""
    names = []
    for model in r.bench_models():
        for isa in r.bench(model)["c_isa"]:
            if isa not in names:
                names.append(isa)
    rows = []
    for model in r.bench_models():
        isa = r.bench(model)["c_isa"]
        rows.append((model, *(f"{num(isa[n]['images_per_s'])} ({ratio(isa[n]['ratio_to_best'])})" if n in isa
                              else "-" for n in names)))
    roles = {n: r.bench(m)["c_isa"][n]["role"] for m in r.bench_models() for n in r.bench(m)["c_isa"]}
    return table(("model", *(f"`{n}`" + (" (test twin)" if roles[n] != "build" else "") for n in names)), rows)


def t_bench_avx2(r):
    """benchmarks/results/{model}.json avx2_peers: C --isa avx2 against torch on its AVX2 kernels."""
    rows = []
    for model in r.bench_models():
        d = r.bench(model).get("avx2_peers")
        if not d:
            continue
        cells = []
        for key in ("batch1_threads1", "batch32_threads1"):
            ips = d[key]["images_per_s"]
            cells.append(f"{num(ips['c_int8'])} / {num(ips['torch_int8'])} ({ratio(d[key]['c_ratio_to_best_peer'])})")
        best = r.bench(model)["accuracy"]["torch_int8"]
        rows.append((model, *cells, f"{pct(d['accuracy']['torch_int8'], 1)} / {pct(best, 1)}"))
    return table(("model", "batch 1: C / torch INT8", "batch 32: C / torch INT8",
                  "torch INT8 accuracy: AVX2 / best kernels"), rows)


def t_bench_aarch64(r):
    """benchmarks/results/{model}.json aarch64_qemu: the NEON OpenMP build under qemu-aarch64."""
    rows = []
    for model in r.bench_models():
        d = r.bench(model).get("aarch64_qemu")
        if not d:
            continue
        ips = d["images_per_s"]
        rows.append((model, d["images"], f"{ips['1']:,.1f}", f"{ips['2']:,.1f}",
                     f"{d['latency_2_threads_over_1']:.2f}"))
    return table(("model", "images", "img/s, 1 thread", "img/s, 2 threads", "latency 2 threads / 1"), rows)


def t_firmware(r):
    """results/firmware_lenet.json (make -C c mcu-size) and the shipped LeNet export's file sizes."""
    d = r.json("results/firmware_lenet.json")

    def parts(items):
        return ", ".join(f"{k} {v:,}" for k, v in items.items())
    files = ", ".join(f"`lenet_{k}` {r.file_size(f'export_model/lenet_{k}'):,}"
                      for k in ("weight.bin", "bias.bin", "model.bin"))
    return table(("LeNet firmware", "bytes"), [
        ("flash (text + data)", f"{d['flash_bytes']:,}: " + parts(
            {(f"{d['images']} {k}" if k == "test images" else k): v for k, v in d["flash_parts"].items()})),
        ("RAM (data + bss)", f"{d['ram_bytes']:,}: {parts(d['ram_parts'])}"),
        ("the shipped export today", files)]) + [
        "", f"{d['toolchain']}; `results/firmware_lenet.json`, from {d['recorded_from']}."]


def t_demo_summary(r):
    """results/demo_summary.txt, the table make demo printed when tools/timings.py timed it: its
    engines' part (the files written and the retraining hint follow it)."""
    try:
        with open(r.path("results/demo_summary.txt")) as f:
            text = f.read().split("\n\n")[0].rstrip("\n")
    except FileNotFoundError:
        text = "(not measured yet: python tools/timings.py writes results/demo_summary.txt)"
    return ["```", *text.splitlines(), "```"]


TABLES = {
    "demo_summary": t_demo_summary, "timings": t_timings, "accuracy": t_accuracy, "test_json": t_test_json, "test_seconds": t_test_seconds, "checkpoints": t_checkpoints,
    "weight_sqnr": t_weight_sqnr, "report": t_report, "speed_summary": t_speed_summary,
    "bench_cells": t_bench_cells, "bench_single": t_bench_single, "bench_isa": t_bench_isa,
    "bench_avx2": t_bench_avx2, "bench_aarch64": t_bench_aarch64, "firmware": t_firmware,
    "low_bit": t_low_bit, "low_bit_peer": t_low_bit_peer, "bench_cells_w7": lambda r: t_bench_cells(r, BENCH_W7),
}

# single figures quoted in prose
FIGURES = {
    "lenet_c_seconds": lambda r: f"{r.test_report('lenet', 'per_channel')['seconds']['c_int8']:.2f} s",
    "lenet_weight_bytes": lambda r: f"{r.file_size('export_model/lenet_weight.bin'):,}",
    "lenet_accuracy": lambda r: pct(r.test_report("lenet", "per_channel")["accuracy"]["c_int8"]),
    "firmware_flash_kb": lambda r: "about {:.0f} KB of flash".format(
        (r.json("results/firmware_lenet.json")["flash_bytes"]
         - r.json("results/firmware_lenet.json")["flash_parts"]["test images"]) / 1000),
}

# what each table reads, for the messages
SOURCES = {"demo_summary": "results/demo_summary.txt", "timings": TIMINGS, "accuracy": "results/*_{per_channel,per_tensor}.json",
           "test_seconds": "results/*_per_channel.json", "test_json": "results/lenet_per_channel.json", "checkpoints": "pretrained/*_raw.pth",
           "weight_sqnr": "results/reports/*.json", "report": "results/reports/*_per_channel.json",
           "firmware": "results/firmware_lenet.json, export_model/lenet_*",
           "low_bit": "results/low_bit/*.json", "bench_cells_w7": BENCH_W7 + "/*.json", "low_bit_peer": "results/low_bit/*.json, results/peers/brevitas.json",
           "lenet_c_seconds": "results/lenet_per_channel.json", "lenet_accuracy": "results/lenet_per_channel.json",
           "lenet_weight_bytes": "export_model/lenet_weight.bin", "firmware_flash_kb": "results/firmware_lenet.json"}


# ---------------------------------------------------------------------------------------------
# rewriting the files
# ---------------------------------------------------------------------------------------------

def doc_files(root):
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def render(text, results, rel):
    """(new text, [names of the tables and figures that changed]) of one file."""
    changed = []

    def block(m):
        name = m.group(1)
        if name not in TABLES:
            raise DocsError(f"{rel}: unknown table '{name}' (known: {', '.join(TABLES)})")
        body = "\n".join(TABLES[name](results)) + "\n"
        if body != m.group(2):
            changed.append(f"table '{name}'")
        return f"<!-- table:{name} -->\n{body}<!-- /table -->"

    def inline(m):
        name = m.group(1)
        if name not in FIGURES:
            raise DocsError(f"{rel}: unknown figure '{name}' (known: {', '.join(FIGURES)})")
        value = FIGURES[name](results)
        if value != m.group(2):
            changed.append(f"figure '{name}'")
        return f"<!-- fig:{name} -->{value}<!-- /fig -->"

    text = BLOCK.sub(block, text)
    text = INLINE.sub(inline, text)
    return text, changed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a table differs from its results files")
    ap.add_argument("--root", default=ROOT, help="the checkout (default: this script's)")
    args = ap.parse_args(argv)
    results = Results(args.root)
    stale = 0
    try:
        for path in doc_files(args.root):
            rel = os.path.relpath(path, args.root)
            with open(path) as f:
                text = f.read()
            new, changed = render(text, results, rel)
            for what in changed:
                name = what.split("'")[1]
                src = SOURCES.get(name, "benchmarks/results/*.json")
                if args.check:
                    print(f"{rel}: {what} differs from its results ({src}); run `make docs`")
                stale += 1
            if changed and not args.check:
                with open(path, "w") as f:
                    f.write(new)
                print(f"rewrote {rel}: {', '.join(changed)}")
    except DocsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not args.check else 1
    if args.check:
        return 1 if stale else 0
    if not stale:
        print("every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
