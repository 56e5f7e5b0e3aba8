"""A peer on the same work (issue 27 item 8): Brevitas's post-training quantization of the shipped
CIFAR-10 checkpoints at W4A8 and W3A8, on the images FPGAI uses, for the table in docs/results.md.

Runs in its own venv (`make peers-venv`: .venv-peers, brevitas 0.13.4 on the same torch 2.14.1;
brevitas is no dependency of FPGAI):

    .venv-peers/bin/python benchmarks/peer_ptq.py --json=results/peers/brevitas.json   # = make peers

The recipe is Brevitas's own ImageNet PTQ example (brevitas_examples/imagenet_classification/ptq,
ptq_evaluate.py with its defaults and --gptq): BN merged into the convolutions and 20 iterations
of graph equalization (preprocess_for_quantize), graph-mode quantization (brevitas.graph.quantize,
the 'fx' backend: every conv and linear, the first and the last included, at the weight width),
weights symmetric per output channel with float scales from their statistics (abs max), activations
8-bit per tensor, static, 99.999th percentile (unsigned after ReLU), 32-bit biases; then activation
calibration (calibration_mode), GPTQ (gptq_mode, layer by layer on the calibration images) and bias
correction (bias_correction_mode). `--method=rtn` leaves GPTQ out (the same quantizers, plain
rounding). The calibration images are the ones quant_model.py draws: torch.randperm over the
training set with seed 0, the first --calib_images; the test images the first --limit of the test set.
"""
import argparse
import json
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import config  # noqa: E402
import model as models  # noqa: E402
from data import datasets  # noqa: E402
from tools.machine import cpu  # noqa: E402

MODELS = ("resnet18", "vgg13", "mobilenet_v2")


def load_model(name):
    cfg = types.SimpleNamespace(model=name, checkpoint="", pretrained_dir=os.path.join(ROOT, config.PRETRAINED_DIR))
    net, _ = models.load_raw(cfg)
    return net.float().eval()


def to_float(images):
    return images.float() / 255.0          # what FPGAI's float model sees (no mean/std for these models)


@torch.no_grad()
def accuracy(net, images, labels, batch=250):
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((net(to_float(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
    return 100.0 * correct / len(images)


def batches(images, batch):
    return [to_float(images[i:i + batch]) for i in range(0, len(images), batch)]


def brevitas_ptq(net, calib, weight_bits, act_bits, method, batch):
    """Brevitas's ImageNet PTQ example with its default settings (and GPTQ unless method is rtn)."""
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.gptq import gptq_mode
    from brevitas.graph.quantize import preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq.ptq_common import quantize_model

    xs = batches(calib, batch)
    net = preprocess_for_quantize(net, equalize_iters=20, equalize_merge_bias=True, merge_bn=True)
    qnet = quantize_model(
        net, backend="fx", weight_bit_width=weight_bits, act_bit_width=act_bits, bias_bit_width=32,
        weight_quant_granularity="per_channel", act_quant_percentile=99.999, act_quant_type="sym",
        scale_factor_type="float_scale", quant_format="int", weight_param_method="stats",
        act_param_method="stats", weight_quant_type="sym", uint_sym_act_for_unsigned_values=True)
    qnet.eval()
    with torch.no_grad():
        qnet(xs[0])                                    # some quantizers initialise on a first pass
        with calibration_mode(qnet):
            for x in xs:
                qnet(x)
        if method == "gptq":
            with gptq_mode(qnet, act_order=False, use_quant_activations=False, create_weight_orig=True) as gptq:
                for _ in range(gptq.num_layers):
                    for x in xs:
                        gptq.model(x)
                    gptq.update()
        with bias_correction_mode(qnet):
            for x in xs:
                qnet(x)
    return qnet.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,vgg13", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--weight_bits", default="4,3")
    p.add_argument("--act_bits", type=int, default=8)
    p.add_argument("--method", default="gptq", help="gptq (GPTQ + bias correction) or rtn, comma-separated")
    p.add_argument("--calib_images", type=int, default=512)
    p.add_argument("--limit", type=int, default=2000, help="the first N test images (0: all 10,000)")
    p.add_argument("--seed", type=int, default=config.SEED)
    p.add_argument("--batch", type=int, default=128, help="calibration batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default="", help="write the rows here (rows of other settings already there are kept)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import brevitas
    data_dir, mirror_dir = config.dataset_dirs(ROOT)
    train_x, _ = datasets.load("cifar10", "train", data_dir, mirror_dir)
    test_x, test_y = datasets.load("cifar10", "test", data_dir, mirror_dir)
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed))[:args.calib_images]
    calib = train_x[pick]
    n = min(args.limit or len(test_x), len(test_x))
    test_x, test_y = test_x[:n], test_y[:n]
    env = {"brevitas": brevitas.__version__, "torch": torch.__version__, "cpu": cpu(),
           "threads": torch.get_num_threads()}

    rows = []
    print(f"Brevitas {env['brevitas']}, torch {env['torch']}, {env['cpu']} ({env['threads']} threads); "
          f"{len(calib)} calibration images (seed {args.seed}), the first {n} test images")
    for name in args.models.split(","):
        float_acc = accuracy(load_model(name), test_x, test_y)
        for bits in [int(b) for b in args.weight_bits.split(",")]:
            for method in args.method.split(","):
                torch.manual_seed(args.seed)
                t0 = time.perf_counter()
                qnet = brevitas_ptq(load_model(name), calib, bits, args.act_bits, method, args.batch)
                seconds_ptq = time.perf_counter() - t0
                q_acc = accuracy(qnet, test_x, test_y)
                seconds = time.perf_counter() - t0
                row = {"model": name, "weight_bits": bits, "act_bits": args.act_bits,
                       "method": ("gptq+bias_correction" if method == "gptq" else "rtn+bias_correction"),
                       "recipe": "brevitas_examples ptq defaults: merge BN, 20 graph-eq iters, fx backend, "
                                 "per-channel sym float-scale weights (stats), per-tensor 8-bit acts p99.999",
                       "calib_images": len(calib), "test_images": n, "seed": args.seed,
                       "float_accuracy": round(float_acc, 2), "quant_accuracy": round(q_acc, 2),
                       "drop": round(float_acc - q_acc, 2), "seconds_quantize": round(seconds_ptq, 1),
                       "seconds": round(seconds, 1), **env}
                rows.append(row)
                print(f"  {name:13s} W{bits}A{args.act_bits} {row['method']:21s} float {float_acc:6.2f}  "
                      f"quant {q_acc:6.2f}  drop {float_acc - q_acc:5.2f}  {seconds:6.1f} s", flush=True)
                if args.json:
                    write_json(args.json, rows)

    print(f"\n| model | bits | method | float % | Brevitas % | drop | seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | W{r['weight_bits']}A{r['act_bits']} | {r['method']} | {r['float_accuracy']:.2f} | "
              f"{r['quant_accuracy']:.2f} | {r['drop']:.2f} | {r['seconds']:.0f} |")


def key(r):
    return (r["model"], r["weight_bits"], r["act_bits"], r["method"], r["calib_images"], r["test_images"])


def write_json(path, rows):
    """The rows, merged into what the file holds (a row of the same settings replaced)."""
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f).get("rows", [])
    mine = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in mine] + rows
    merged.sort(key=lambda r: (r["test_images"], r["model"], -r["weight_bits"], r["method"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"tool": "brevitas", "script": "benchmarks/peer_ptq.py", "rows": merged}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
