"""C INT8 against its peers, in one run, on the same images and the same float checkpoint.

  c_int8          c/inference --batch B (one thread), c/inference_omp --batch B --threads T (every
                  core: a batch of 1 splits each layer across the threads, a batch of 32 splits
                  the batch between them); the best build of its kernels this CPU runs
  (c --isa ISA    c/inference with each build of its kernels this CPU runs forced, batch 1, one
                  thread, and its ratio to the best: avx512, avxvnni, avx2, c99; and avxvnni-evex,
                  avxvnni's test twin with the EVEX vpdpbusd, which shows that code's speed on CPUs
                  with AVX-512 VNNI but no AVX-VNNI)
  torch_fp32      the float model
  torch_int8      torch.ao FX post-training quantization, x86 backend, per channel
  ort_int8        ONNX Runtime, static QDQ per-channel quantization

Each in four cells: batch 1 and batch 32, on 1 thread and on every core (torch.set_num_threads,
ORT's intra-op threads).  Prints the images/s of each engine in each cell, the ratio C / the best
peer of each cell, each engine's accuracy, C's peak resident memory and the GMAC/s it reaches (with
AVX-512 VNNI: its share of one core's vpdpbusd peak, `make vnni-peak`);
--json PATH writes it all. Usage: `make bench MODEL=lenet`, or:
  .venv/bin/python benchmarks/bench_inference.py --model=lenet --json=bench.json
"""
import json
import os
import re
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
from data import datasets  # noqa: E402
from model.export_format import write_export  # noqa: E402
from model.fileio import ModelFileError, atomic_open  # noqa: E402
from model.quantize import build_integer_graph  # noqa: E402

BATCHES = (1, 32)
ISAS = ("avx512", "avxvnni", "avx2", "c99")        # c/inference's builds of the optimized kernels, best first
TWIN_ISAS = ("avxvnni-evex",)       # test twins (c/Makefile): measured, never the best


def conv_kernel_macs(state, quant_list):
    """Exact multiply-accumulates per image: output elements x weights per output."""
    total = 0
    for op in quant_list:
        if op["op"] in ("conv", "linear"):
            w = state[op["name"] + ".weight"]
            per_output = int(np.prod(w.shape[1:]))
            total += int(np.prod(op["shape"])) * per_output
    return total


def cell_name(batch, threads):
    return f"batch{batch}_threads{threads}"


def time_batches(fn, x, batch):
    """(images/s, predictions) running fn over x in chunks of `batch`."""
    fn(x[:batch])                                   # warm-up
    preds = []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        preds.append(fn(x[i:i + batch]))
    return len(x) / (time.perf_counter() - t0), np.concatenate(preds)


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


def write_images(images, labels, dataset, folder):
    """The images in the dataset format the C engine reads; (images path, labels path or None)."""
    n = len(images)
    if dataset == "mnist":
        img, lab = os.path.join(folder, "images-idx3-ubyte"), os.path.join(folder, "labels-idx1-ubyte")
        with open(img, "wb") as f:
            f.write(np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + images.numpy().tobytes())
        with open(lab, "wb") as f:
            f.write(np.array([0x801, n], dtype=">i4").tobytes() + labels.numpy().astype(np.uint8).tobytes())
        return img, lab
    path = os.path.join(folder, "test_batch.bin")
    records = np.concatenate([labels.numpy().astype(np.uint8)[:, None], images.numpy().reshape(n, -1)], axis=1)
    records.tofile(path)
    return path, None


def c_binary(threads):
    """c/inference for one thread (no OpenMP), c/inference_omp for more"""
    return os.path.join(ROOT, "c", "inference" if threads == 1 else "inference_omp")


def run_c(model_name, folder, images, labels, batch, threads, extra=()):
    """(images/s, predictions); None for an --isa this CPU lacks."""
    cmd = [c_binary(threads), "--model", model_name, "--dir", folder, "--images", images, "--batch", str(batch),
           "--threads", str(threads), "--logits", os.path.join(folder, "logits.txt"), "--quiet", *extra] + (
        ["--labels", labels] if labels else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0 and ("this CPU lacks" in err or ": unknown, this binary has" in err):
        return None
    if proc.returncode != 0:
        sys.exit(f"error: C engine failed: {err.strip()}")
    m = re.search(r"result: images=(\d+) correct=(\d+) seconds=([0-9.eE+-]+)", out)
    logits = np.loadtxt(os.path.join(folder, "logits.txt"), delimiter=",", dtype=np.int64, ndmin=2)
    return int(m.group(1)) / float(m.group(3)), logits.argmax(1)


def vnni_peak_gmac_per_s():
    """One core's vpdpbusd ceiling (`make vnni-peak`), or None where the CPU or compiler lacks AVX-512 VNNI."""
    proc = subprocess.run(["make", "-s", "-C", ROOT, "vnni-peak"], capture_output=True, text=True)
    m = re.search(r"= ([0-9.]+) GMAC/s", proc.stdout)
    return float(m.group(1)) if proc.returncode == 0 and m else None


def peak_rss_mb(binary, model_name, folder, images, labels):
    """The C engine's own peak resident memory.  Not os.wait4's ru_maxrss: a child
    forked from this (large, torch-loaded) process inherits its high-water mark
    across exec.  GNU time forks from a small process; else poll VmHWM."""
    cmd = [binary, "--model", model_name, "--dir", folder, "--images", images, "--quiet"] + (
        ["--labels", labels] if labels else [])
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


def main():
    cfg = config.load_or_exit(extra={
        "json": ("", "write the results as JSON to this file (\"\" = no)"),
        "images": (1000, "test images to time"),
        "calib": (200, "training images that calibrate the INT8 models"),
        "random_weights": (False, "time random weights instead of the trained checkpoint")})
    spec = models.spec(cfg.model)
    warnings.filterwarnings("ignore")
    torch.manual_seed(cfg.seed)
    if cfg.random_weights:
        net, header = models.build(cfg.model).eval(), {}
    else:
        try:
            net, header = models.load_raw(cfg)
        except ModelFileError as err:
            sys.exit(f"error: {err} (or pass --random_weights=True to time random weights)")
    test_x, test_y = datasets.load(spec.dataset, "test", cfg.data_dir, cfg.mirror_dir)
    train_x, _ = datasets.load(spec.dataset, "train", cfg.data_dir, cfg.mirror_dir)
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.calib]
    calib_u8 = train_x[pick]
    calib = calib_u8.float() / 255
    x_u8, y = test_x[:cfg.images], test_y[:cfg.images].numpy()
    x = x_u8.float() / 255
    example = x[:1]
    torch.set_num_threads(1)

    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "c"), "inference", "omp"], check=True)
    state, quant_list = build_integer_graph(net, calib_u8, cfg, spec.dataset, header)
    result = {"model": cfg.model, "images": len(x), "calibration_images": len(calib),
              "weights": "random" if cfg.random_weights else "checkpoint"}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        write_export(state, quant_list, tmp, "bin")
        images, labels = write_images(x_u8, test_y[:cfg.images], spec.dataset, tmp)
        all_threads = os.cpu_count()
        thread_counts = sorted({1, all_threads})
        q = torch_int8(net, calib, example)
        ort_runs = ort_int8(net, calib, example, tmp, thread_counts)
        accuracy = {}
        for batch in BATCHES:
            for threads in thread_counts:
                speeds = {}
                speeds["c_int8"], c_pred = run_c(cfg.model, tmp, images, labels, batch, threads)
                accuracy["c_int8"] = float((c_pred == y).mean())
                torch.set_num_threads(threads)
                peers = {"torch_fp32": lambda b: net(b).argmax(1).numpy(), "torch_int8": lambda b: q(b).argmax(1).numpy(),
                         "ort_int8": lambda b: ort_runs[threads](b).argmax(1)}
                for name, fn in peers.items():
                    speeds[name], pred = time_batches(fn, x, batch)
                    accuracy[name] = float((pred == y).mean())
                best = max(peers, key=speeds.get)
                result[cell_name(batch, threads)] = {"batch": batch, "threads": threads, "images_per_s": speeds,
                                                     "best_peer": best, "c_ratio_to_best_peer": speeds["c_int8"] / speeds[best]}
        torch.set_num_threads(1)
        isa_runs = {isa: run_c(cfg.model, tmp, images, labels, 1, 1, ["--isa", isa]) for isa in ISAS + TWIN_ISAS}
        isa_speeds = {isa: run[0] for isa, run in isa_runs.items() if run}
        best_isa = max((isa for isa in isa_speeds if isa in ISAS), key=isa_speeds.get)
        result["c_isa"] = {isa: {"images_per_s": v, "ratio_to_best": v / isa_speeds[best_isa]}
                           for isa, v in isa_speeds.items()}
        result["c_peak_rss_mb"] = peak_rss_mb(os.path.join(ROOT, "c", "inference"), cfg.model, tmp, images, labels)
    weight_bytes = sum(state[op["name"] + ".weight"].numel() + 4 * state[op["name"] + ".bias"].numel()
                       for op in quant_list if op["op"] in ("conv", "linear"))
    activations = sorted((int(np.prod(op["shape"])) for op in quant_list), reverse=True)
    result["c_memory_budget_mb"] = (2 * (weight_bytes + sum(activations[:2])) + 8 * 2 ** 20) / 2 ** 20
    result["gmac_per_image"] = conv_kernel_macs(state, quant_list) / 1e9
    result["c_gmac_per_s"] = result["gmac_per_image"] * result[cell_name(1, 1)]["images_per_s"]["c_int8"]
    # the batch-1 cell runs the best build: its share of the VNNI peak where that build is avx512
    result["vnni_peak_gmac_per_s"] = vnni_peak_gmac_per_s() if best_isa == "avx512" else None
    result["accuracy"] = accuracy
    result["machine"] = f"{os.cpu_count()} cores, {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}" \
        if os.path.exists("/proc/cpuinfo") else f"{os.cpu_count()} cores"

    print(f"\n{cfg.model}: {len(x)} test images, {result['weights']} weights, {result['machine']}")
    cells = [result[cell_name(b, t)] for b in BATCHES for t in thread_counts]
    print(f"{'img/s':<16}" + "".join(f"{'batch %d, %d thr' % (c['batch'], c['threads']):>20}" for c in cells)
          + f"{'accuracy':>10}")
    for name in cells[0]["images_per_s"]:
        print(f"{name:<16}" + "".join(f"{c['images_per_s'][name]:>20.0f}" for c in cells)
              + f"{accuracy[name] * 100:>9.2f}%")
    print(f"{'C / best peer':<16}" + "".join(
        f"{'%.2fx (%s)' % (c['c_ratio_to_best_peer'], c['best_peer']):>20}" for c in cells))
    print("C per kernel build (--isa, one thread): " + ", ".join(
        f"{isa}{' (EVEX test twin)' if isa in TWIN_ISAS else ''} {v['images_per_s']:.0f} img/s"
        f" ({v['ratio_to_best']:.2f}x)"
        for isa, v in result["c_isa"].items()))
    peak = result["vnni_peak_gmac_per_s"]
    share = f" = {100 * result['c_gmac_per_s'] / peak:.0f}% of one core's vpdpbusd peak ({peak:.0f})" if peak else ""
    print(f"C: {result['gmac_per_image']:.4f} GMAC/image, {result['c_gmac_per_s']:.1f} GMAC/s on one thread (batch 1)"
          f"{share}, peak RSS {result['c_peak_rss_mb']:.1f} MB (budget {result['c_memory_budget_mb']:.1f} MB)")
    if cfg.json:
        with atomic_open(cfg.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {cfg.json}")


if __name__ == "__main__":
    main()
