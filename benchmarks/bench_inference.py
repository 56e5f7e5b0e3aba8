"""C INT8 against its peers, in one run, on the same images and the same float checkpoint.

  c_int8          c/inference --batch B (one thread), c/inference_omp --batch B --threads T (every
                  core: a batch of 1 splits each layer across the threads, a batch of 32 splits
                  the batch between them); the best build of its kernels this CPU runs
  (c --isa ISA    c/inference with each build of its kernels this CPU runs forced (its
                  --isa-table: amx, avx512, avxvnni, avx2, c99 on x86-64), batch 1, one thread,
                  and its ratio to the best; and the test twins, as avxvnni-evex (avxvnni's code
                  with the EVEX vpdpbusd: that code's speed on CPUs with AVX-512 VNNI but no
                  AVX-VNNI), but not the emulated one (amx-emu), whose speed means nothing)
  (aarch64        c/inference_aarch64_omp under qemu-aarch64 (NEON), batch 1, 1 and 2 threads, on
                  the first AARCH64_IMAGES images: the 2-thread latency against the 1-thread one;
                  where the cross compiler and qemu-user are installed)
  torch_fp32      the float model
  torch_int8      torch.ao FX post-training quantization, x86 backend, per channel
  ort_int8        ONNX Runtime, static QDQ per-channel quantization

Each in four cells: batch 1 and batch 32, on 1 thread and on every core it may use
(torch.set_num_threads, ORT's intra-op threads; under `taskset -c 0`, one core: two cells).  Each
engine is timed --repeats times in each cell, in rounds (every
engine once a round), each time over enough passes of the --images test images to last
--min_seconds, and the fastest counts; so are the forced-ISA rows.  Prints the
images/s of each engine in each cell, the ratio C / the best peer of each cell, each engine's
accuracy, C's peak resident memory and the GMAC/s it reaches (its share of one core's peak where
the best build is avx512, `make vnni-peak`, amx, `make amx-peak`, or avx2, `make avx2-peak`: its
u8-pair step below 8-bit weights, its int16 step at 8); --json PATH writes it all.
Usage: `make bench MODEL=lenet`, or:
  .venv/bin/python benchmarks/bench_inference.py --model=lenet --json=bench.json
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402
import model as models  # noqa: E402
from model import report  # noqa: E402
from data import datasets  # noqa: E402
from model.formats.export_format import packed_bytes, write_export  # noqa: E402
from model.fileio import ModelFileError, atomic_open  # noqa: E402
from model.ops import weighted_ops  # noqa: E402
from model.quant.quantize import build_integer_graph  # noqa: E402
from tools.machine import cpu  # noqa: E402

BATCHES = (1, 32)
QEMU_AARCH64 = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
AARCH64_IMAGES = 16                 # an emulated core runs ResNet18 at about 10 images/s
# torch's switches (fbgemm, oneDNN, ATen) that make it run the kernels it would on an AVX2 CPU:
# the peer of C's AVX2 build on this one.  ONNX Runtime's MLAS has none.
TORCH_AVX2_ENV = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def cell_name(batch, threads):
    return f"batch{batch}_threads{threads}"


def time_batches(fn, x, batch, passes):
    """(seconds, predictions of the first pass) running fn over x `passes` times in chunks of `batch`."""
    fn(x[:batch])                                   # warm-up
    preds = []
    t0 = time.perf_counter()
    for _ in range(passes):
        for i in range(0, len(x), batch):
            preds.append(fn(x[i:i + batch]))
    return time.perf_counter() - t0, np.concatenate(preds)[:len(x)]


def best_speeds(runs, n, cfg):
    """{name: (images/s, predictions)}: runs[name](passes) -> (seconds, predictions) times `passes`
    passes over the n images.  One untimed pass measures each engine; then cfg.repeats rounds, each
    timing every engine in turn over enough passes to last cfg.min_seconds (a run of a few
    milliseconds measures the thread start and the machine's hiccups more than the engine; the
    rounds spread each engine's runs over the cell's time, so a slow spell of the machine does not
    fall on one engine's runs alone), and each engine's fastest counts."""
    first = {name: run(1) for name, run in runs.items()}
    passes = {name: max(1, int(np.ceil(cfg.min_seconds / seconds))) for name, (seconds, _) in first.items()}
    best = dict.fromkeys(runs, 0.0)
    for _ in range(cfg.repeats):
        for name, run in runs.items():
            best[name] = max(best[name], passes[name] * n / run(passes[name])[0])
    return {name: (best[name], first[name][1]) for name in runs}


def time_cells(cfg, x, y, thread_counts, c_run, peers):
    """({cell name: cell}, {engine: accuracy}): in each cell, batch (BATCHES) x threads, c_run(batch,
    threads) (run_c's run) against peers(threads), {engine: fn(images) -> predictions}, timed in
    the same rounds (best_speeds)."""
    cells, accuracy = {}, {}
    for batch in BATCHES:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            runs = {"c_int8": c_run(batch, threads)}
            runs.update({name: lambda passes, fn=fn: time_batches(fn, x, batch, passes)
                         for name, fn in peers(threads).items()})
            timed = best_speeds(runs, len(x), cfg)
            speeds = {name: speed for name, (speed, _) in timed.items()}
            accuracy.update({name: float((pred == y).mean()) for name, (_, pred) in timed.items()})
            best = max((name for name in speeds if name != "c_int8"), key=speeds.get)
            cells[cell_name(batch, threads)] = {"batch": batch, "threads": threads, "images_per_s": speeds,
                                                "best_peer": best, "c_ratio_to_best_peer": speeds["c_int8"] / speeds[best]}
    return cells, accuracy


def print_cells(cells, accuracy):
    """The images/s table of time_cells' cells, each engine's accuracy, C's ratio to the best peer."""
    cells = list(cells.values())
    print(f"{'img/s':<16}" + "".join(f"{'batch %d, %d thr' % (c['batch'], c['threads']):>20}" for c in cells)
          + f"{'accuracy':>10}")
    for name in cells[0]["images_per_s"]:
        print(f"{name:<16}" + "".join(f"{c['images_per_s'][name]:>20.0f}" for c in cells)
              + f"{accuracy[name] * 100:>9.2f}%")
    print(f"{'C / best peer':<16}" + "".join(
        f"{'%.2fx (%s)' % (c['c_ratio_to_best_peer'], c['best_peer']):>20}" for c in cells))


def torch_peers(net, q):
    """{engine: fn(images) -> predictions} of torch fp32 (net) and INT8 (q)"""
    return {"torch_fp32": lambda b: net(b).argmax(1).numpy(), "torch_int8": lambda b: q(b).argmax(1).numpy()}


def avx2_peers(folder):
    """The AVX2 cells: this script run again (--torch_avx2=True) with TORCH_AVX2_ENV set, as torch
    reads it when it starts; {"env", cells, "accuracy"}."""
    path = os.path.join(folder, "avx2.json")
    print(f"\nAVX2: C --isa avx2 against torch with {' '.join(f'{k}={v}' for k, v in TORCH_AVX2_ENV.items())}")
    subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--torch_avx2=True", f"--json={path}"],
                   env={**os.environ, **TORCH_AVX2_ENV}, check=True)
    with open(path) as f:
        return {"env": TORCH_AVX2_ENV, **json.load(f)}


def avx2_against_torch_avx2(cfg, net, q, x, y, folder, images):
    """--torch_avx2=True: C --isa avx2 against torch (fp32 and INT8) on its AVX2 kernels, batch 1 and
    32 on one thread; writes {cells, "accuracy"} to --json."""
    cells, accuracy = time_cells(cfg, x, y, (1,), lambda batch, threads: run_c(
        cfg.model, folder, images, batch, threads, ["--isa", "avx2"]), lambda threads: torch_peers(net, q))
    print_cells(cells, accuracy)
    with atomic_open(cfg.json, "w") as f:
        json.dump({**cells, "accuracy": accuracy}, f, indent=2)


def torch_int8(net, calib, example):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (example,))
    with torch.no_grad():
        for i in range(0, len(calib), 50):
            prepared(calib[i:i + 50])
    return convert_fx(prepared)


def ort_int8(net, calib, example, folder, thread_counts):
    """{threads: run function}: one session per thread count"""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    ort.set_default_logger_severity(3)        # errors only: graph clean-up notes drown the table

    fp32_path, int8_path = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
    torch.onnx.export(net, (example,), fp32_path, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calib[i:i + 50].numpy()} for i in range(0, len(calib), 50)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(fp32_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    runs = {}
    for threads in thread_counts:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"])
        runs[threads] = lambda x, session=session: session.run(None, {"x": x.numpy()})[0]
    return runs


def image_files(images, folder):
    """passes -> the path of a .npy (uint8 N x C x H x W) of the images `passes` times over, for the
    C engine's --images (each count written once, on first use)."""
    paths = {}

    def path(passes):
        if passes not in paths:
            paths[passes] = os.path.join(folder, f"images-{passes}.npy")
            x = images.numpy()
            np.save(paths[passes], np.concatenate([x.reshape(len(x), -1, *x.shape[-2:])] * passes))
        return paths[passes]
    return path


def timed_isas(command):
    """{name: role} of the builds of the optimized kernels that the C engine (command: what runs it)
    holds and this CPU runs (its --isa-table), best first, but the emulated test twins"""
    table = subprocess.run([*command, "--isa-table"], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in table.splitlines()]
    return {row["isa"]: row["role"] for row in rows if row["runs_here"] and row["role"] != "emulated test twin"}


def c_binary(threads):
    """c/inference for one thread (no OpenMP), c/inference_omp for more"""
    return os.path.join(ROOT, "c", "inference" if threads == 1 else "inference_omp")


def run_c(model_name, folder, images, batch, threads, extra=(), binary=None):
    """run(passes) -> (seconds, predictions of the first pass) for the C engine (binary: the command
    that runs it, default c_binary(threads)), images(passes) the test images `passes` times over."""
    cmd = [*(binary or [c_binary(threads)]), "--model", model_name, "--dir", folder, "--batch", str(batch),
           "--threads", str(threads), "--quiet", *extra]

    def run(passes):
        proc = subprocess.run(cmd + ["--images", images(passes), "--logits", os.path.join(folder, "logits.txt")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: C engine failed: {proc.stderr.strip()}")
        seconds = float(re.search(r"result: images=\d+ seconds=([0-9.eE+-]+)", proc.stdout).group(1))
        logits = np.loadtxt(os.path.join(folder, "logits.txt"), delimiter=",", dtype=np.int64, ndmin=2)
        return seconds, logits[:len(logits) // passes].argmax(1)
    return run


PEAKS = {"avx512": "vnni-peak", "amx": "amx-peak", "avx2": "avx2-peak"}   # the make target of each build's ceiling


def peak_gmac_per_s(isa, weight_bits):
    """One core's int8 ceiling of build isa (PEAKS), or None where there is none or the CPU or compiler lacks it.
    avx2 has two: the u8-pair step that takes layers of at most 7-bit weights, and the int16 one of 8 bits."""
    if isa not in PEAKS:
        return None
    proc = subprocess.run(["make", "-s", "-C", ROOT, PEAKS[isa]], capture_output=True, text=True)
    step = ("u8 pairs" if weight_bits <= 7 else "s16") if isa == "avx2" else ""
    m = re.search(rf"^{step}.*?([0-9.]+) GMAC/s", proc.stdout, re.M)
    return float(m.group(1)) if proc.returncode == 0 and m else None


def aarch64_latency(model_name, folder, x_u8, cfg):
    """{threads: batch-1 images/s} of the aarch64 OpenMP build (NEON) under qemu-aarch64 on 1 and 2
    threads, on the first AARCH64_IMAGES images; None without the cross compiler or qemu-user, or
    where qemu's CPU lacks the dot product."""
    if not all(shutil.which(tool) for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64")):
        return None
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c"), "aarch64-omp"], check=True)
    folder_images = os.path.join(folder, "aarch64")
    os.makedirs(folder_images)
    images = image_files(x_u8[:AARCH64_IMAGES], folder_images)
    binary = [*QEMU_AARCH64, os.path.join(ROOT, "c", "inference_aarch64_omp")]
    if "neon" not in timed_isas(binary):
        return None
    runs = {threads: run_c(model_name, folder, images, 1, threads, ["--isa", "neon"], binary) for threads in (1, 2)}
    return {threads: speed for threads, (speed, _) in best_speeds(runs, AARCH64_IMAGES, cfg).items()}


def peak_rss_mb(binary, model_name, folder, images):
    """The C engine's own peak resident memory.  Not os.wait4's ru_maxrss: a child
    forked from this (large, torch-loaded) process inherits its high-water mark
    across exec.  GNU time forks from a small process; else poll VmHWM."""
    cmd = [binary, "--model", model_name, "--dir", folder, "--images", images, "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if os.path.exists("/usr/bin/time"):
        proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env)
        return int(proc.stderr.strip().splitlines()[-1]) / 1024.0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak, name = 0, os.path.basename(binary)[:15]
    while proc.poll() is None:
        try:
            status = open(f"/proc/{proc.pid}/status").read()
        except OSError:
            break
        if re.search(rf"^Name:\s+{re.escape(name)}$", status, re.M):       # after exec
            m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            peak = max(peak, int(m.group(1))) if m else peak
        time.sleep(0.001)
    return peak / 1024.0


def check_torch_avx2_env(cfg):
    """--torch_avx2=True runs only with TORCH_AVX2_ENV set before torch started: refused before any work."""
    if cfg.torch_avx2:
        missing = [k for k, v in TORCH_AVX2_ENV.items() if os.environ.get(k) != v]
        if missing:
            sys.exit(f"error: --torch_avx2=True needs {', '.join(f'{k}={TORCH_AVX2_ENV[k]}' for k in missing)} "
                     f"set before torch starts (a full run of this script sets them)")


def load_net(cfg):
    """(float model, its checkpoint's header): the trained checkpoint, or --random_weights."""
    if cfg.random_weights:
        return models.build(cfg.model).eval(), {}
    try:
        return models.load_raw(cfg)
    except ModelFileError as err:
        sys.exit(f"error: {err} (or pass --random_weights=True to time random weights)")


def load_images(cfg, spec):
    """(calib_u8, x_u8, y): --calib training images drawn by --seed, the first --images test images
    and their labels."""
    test_x, test_y = datasets.load(spec.dataset, "test", cfg.data_dir, cfg.mirror_dir)
    train_x, _ = datasets.load(spec.dataset, "train", cfg.data_dir, cfg.mirror_dir)
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.calib]
    return train_x[pick], test_x[:cfg.images], test_y[:cfg.images].numpy()


def time_isas(cfg, folder, images, n):
    """({isa: {"role", "images_per_s", "ratio_to_best"}}, the fastest build): each build of the kernels
    this CPU runs (timed_isas), batch 1, one thread."""
    roles = timed_isas([c_binary(1)])
    isa_speeds = {isa: speed for isa, (speed, _) in best_speeds(
        {isa: run_c(cfg.model, folder, images, 1, 1, ["--isa", isa]) for isa in roles}, n, cfg).items()}
    best_isa = max((isa for isa in isa_speeds if roles[isa] == "build"), key=isa_speeds.get)
    return ({isa: {"role": roles[isa], "images_per_s": v, "ratio_to_best": v / isa_speeds[best_isa]}
             for isa, v in isa_speeds.items()}, best_isa)


def time_c_and_peers(cfg, net, header, calib_u8, x_u8, y, result):
    """The timed part, in a temporary export of the integer graph: the cells, the forced ISAs, the
    AVX2 peers, C's peak memory, aarch64; into result.  Returns (state, quant_list, cells, accuracy,
    best isa), or None after --torch_avx2=True's run."""
    calib, x = calib_u8.float() / 255, x_u8.float() / 255
    example = x[:1]
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c"), "inference", "omp"], check=True)
    state, quant_list = build_integer_graph(net, calib_u8, cfg, models.spec(cfg.model).dataset, header)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        write_export(state, quant_list, tmp, "bin")
        images = image_files(x_u8, tmp)
        thread_counts = sorted({1, config.usable_cpus()})
        q = torch_int8(net, calib, example)
        if cfg.torch_avx2:
            return avx2_against_torch_avx2(cfg, net, q, x, y, tmp, images)
        ort_runs = ort_int8(net, calib, example, tmp, thread_counts)
        cells, accuracy = time_cells(
            cfg, x, y, thread_counts, lambda batch, threads: run_c(cfg.model, tmp, images, batch, threads),
            lambda threads: {**torch_peers(net, q), "ort_int8": lambda b: ort_runs[threads](b).argmax(1)})
        result.update(cells)
        torch.set_num_threads(1)
        result["c_isa"], best_isa = time_isas(cfg, tmp, images, len(x))
        if "avx2" in result["c_isa"] and best_isa != "avx2":      # else the cells above ran torch's AVX2 kernels
            result["avx2_peers"] = avx2_peers(tmp)
        result["c_peak_rss_mb"] = peak_rss_mb(os.path.join(ROOT, "c", "inference"), cfg.model, tmp, images(1))
        aarch64 = aarch64_latency(cfg.model, tmp, x_u8, cfg)
        if aarch64:
            result["aarch64_qemu"] = {"images": AARCH64_IMAGES, "images_per_s": aarch64,
                                      "latency_2_threads_over_1": aarch64[1] / aarch64[2]}
    return state, quant_list, cells, accuracy, best_isa


def c_figures(state, quant_list, result, best_isa):
    """C's memory budget, GMAC per image, GMAC/s at batch 1 on one thread and the peak of its best build."""
    weight_bytes = sum(packed_bytes(state[op["name"] + ".weight"].numel(), op["weight_bits"])
                       + 4 * state[op["name"] + ".bias"].numel() for op in weighted_ops(quant_list))
    activations = sorted((int(np.prod(op["shape"])) for op in quant_list), reverse=True)
    result["c_memory_budget_mb"] = (2 * (weight_bytes + sum(activations[:2])) + 8 * 2 ** 20) / 2 ** 20
    result["gmac_per_image"] = sum(report.macs(state, op) for op in quant_list) / 1e9
    result["c_gmac_per_s"] = result["gmac_per_image"] * result[cell_name(1, 1)]["images_per_s"]["c_int8"]
    # the batch-1 cell runs the best build: its share of that build's peak
    result["peak_gmac_per_s"] = peak_gmac_per_s(best_isa, max(op["weight_bits"] for op in weighted_ops(quant_list)))


def print_isas_and_avx2(result, accuracy):
    """The forced-ISA row, and C --isa avx2 against torch's AVX2 kernels where measured."""
    print("C per kernel build (--isa, one thread): " + ", ".join(
        f"{isa}{'' if v['role'] == 'build' else ' (' + v['role'] + ')'} {v['images_per_s']:.0f} img/s"
        f" ({v['ratio_to_best']:.2f}x)"
        for isa, v in result["c_isa"].items()))
    if "avx2_peers" in result:
        a = result["avx2_peers"]
        print("C --isa avx2 against torch on its AVX2 kernels, one thread: " + ", ".join(
            f"batch {c['batch']} {c['images_per_s']['c_int8']:.0f} against {c['images_per_s']['torch_int8']:.0f} "
            f"img/s ({c['images_per_s']['c_int8'] / c['images_per_s']['torch_int8']:.2f}x torch INT8)"
            for c in (a[cell_name(b, 1)] for b in BATCHES))
            + f"; torch INT8's accuracy there {a['accuracy']['torch_int8'] * 100:.2f}% "
              f"({accuracy['torch_int8'] * 100:.2f}% on its best kernels)")


def print_aarch64_and_c(result, best_isa):
    """The aarch64 latencies (or why none), C's GMAC/s and memory."""
    if "aarch64_qemu" in result:
        a = result["aarch64_qemu"]
        print(f"aarch64 under qemu-aarch64 (NEON, batch 1, {a['images']} images): 1 thread "
              f"{a['images_per_s'][1]:.1f} img/s, 2 threads {a['images_per_s'][2]:.1f} img/s: the 2-thread latency "
              f"is {a['latency_2_threads_over_1']:.2f}x the 1-thread one")
    else:
        print("aarch64: not measured (it needs aarch64-linux-gnu-gcc and qemu-aarch64, c/mcu/install-toolchain.sh, "
              "and an emulated CPU with the dot product)")
    peak = result["peak_gmac_per_s"]
    share = f" = {100 * result['c_gmac_per_s'] / peak:.0f}% of one core's {best_isa} peak ({peak:.0f})" if peak else ""
    print(f"C: {result['gmac_per_image']:.4f} GMAC/image, {result['c_gmac_per_s']:.1f} GMAC/s on one thread (batch 1)"
          f"{share}, peak RSS {result['c_peak_rss_mb']:.1f} MB (budget {result['c_memory_budget_mb']:.1f} MB)")


def main():
    cfg = config.load_or_exit(extra={
        "json": ("", "write the results as JSON to this file (\"\" = no)"),
        "images": (1000, "test images to time"),
        "min_seconds": (0.5, "the least time one timed run of an engine takes (passes over the images repeated)"),
        "repeats": (3, "timed runs of each engine in each cell, the fastest counts"),
        "calib": (200, "training images that calibrate the INT8 models"),
        "random_weights": (False, "time random weights instead of the trained checkpoint"),
        "torch_avx2": (False, "only C --isa avx2 against torch on its AVX2 kernels (TORCH_AVX2_ENV set), batch 1 "
                              "and 32 on one thread: what a full run does itself where the CPU runs better")})
    check_torch_avx2_env(cfg)               # before any work
    spec = models.spec(cfg.model)
    warnings.filterwarnings("ignore")
    torch.manual_seed(cfg.seed)
    net, header = load_net(cfg)
    calib_u8, x_u8, y = load_images(cfg, spec)
    torch.set_num_threads(1)

    result = {"model": cfg.model, "images": len(x_u8), "calibration_images": len(calib_u8), "weight_bits": cfg.weight_bits,
              "weights": "random" if cfg.random_weights else "checkpoint"}
    timed = time_c_and_peers(cfg, net, header, calib_u8, x_u8, y, result)
    if cfg.torch_avx2:
        return timed
    state, quant_list, cells, accuracy, best_isa = timed
    c_figures(state, quant_list, result, best_isa)
    result["accuracy"] = accuracy
    result["machine"] = cpu()

    print(f"\n{cfg.model}: {len(x_u8)} test images, {result['weights']} weights, {result['machine']}")
    print_cells(cells, accuracy)
    print_isas_and_avx2(result, accuracy)
    print_aarch64_and_c(result, best_isa)
    if cfg.json:
        with atomic_open(cfg.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {cfg.json}")


if __name__ == "__main__":
    main()
