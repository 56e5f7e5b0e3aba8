"""Low-bit accuracy on the full test set (issue 27's done-when table): for each model and width,
quant_model.py with its default post-training methods, then test_model.py's float, numpy and C
columns on every test image; test_model.py fails the run if C and numpy differ on any image.
`--numpy_on_peer_images` runs the numpy column (the slow one) on the peer's images only.

    python benchmarks/low_bit_accuracy.py                       # resnet18, mobilenet_v2, vgg13 x W4A8, W3A8
    python benchmarks/low_bit_accuracy.py --models=vgg13 --widths=4/4,2/8
    python benchmarks/low_bit_accuracy.py --models=mobilenet_v2 --widths=3/8 --bias_correction=on
    python benchmarks/low_bit_accuracy.py --models=vgg13 --widths=4/4 --qat_epochs=1 --qat_lr=0.001
    python benchmarks/low_bit_accuracy.py --models=vgg13 --widths=2/8 --ends_at_8 --qat_epochs=2

Each (model, width) writes results/low_bit/{model}_w{W}a{A}{variant}.json, the variant naming what
differs from the post-training defaults (`_on` for --bias_correction=on, `_ends8` for
--ends_at_8, `_qat{N}` for --qat_epochs=N, `_distill` for --qat_loss=distill, `_lr{X}` for a --qat_lr
other than 0.001): the settings, the CPU and test_model.py's report. A result already there is kept
(the run resumes where it stopped) unless --overwrite. The calibration images are the 512 that
benchmarks/peer_ptq.py gives Brevitas, so the two tables in docs/results.md compare the same work. The
tuples go to a scratch folder (--work_dir).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model.fileio import atomic_open  # noqa: E402
from model.formats.tuple_check import load_tuple  # noqa: E402
from tools.machine import cpu  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "vgg13")
WIDTHS = ("4/8", "3/8")
CALIB_IMAGES = 512
QAT_LR = 0.001          # the CIFAR-10 networks' fine-tuning rate (docs/stages.md)


def parse_widths(text):
    """'4/8,3/8' -> [(4, 8), (3, 8)]: weight bits / activation bits."""
    try:
        pairs = [tuple(int(v) for v in item.split("/")) for item in text.split(",")]
    except ValueError:
        pairs = [()]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"--widths={text}: expected W/A pairs such as 4/8,3/8")
    return pairs


def run(cmd, log):
    """Run one stage, its output to log; exit with the log's tail when it fails."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}):\n" + open(log).read()[-3000:])


def measure(model, weight_bits, act_bits, quant_dir, args):
    os.makedirs(quant_dir, exist_ok=True)
    commit = code_version()         # before the stages run: what they ran, whatever is edited meanwhile
    settings = [f"--model={model}", f"--quant_dir={quant_dir}", f"--threads={args.threads}"]
    widths = [f"--weight_bits={weight_bits}", f"--act_bits={act_bits}", f"--calib_images={CALIB_IMAGES}",
              "--calib_method=auto", f"--bias_correction={args.bias_correction}"]
    if args.ends_at_8:
        widths.append(f"--bits={ends_at_8(model, quant_dir, args)}")
    if args.qat_epochs:     # its state file in quant_dir: a stopped run resumes at its last epoch
        widths += [f"--qat_epochs={args.qat_epochs}", f"--qat_lr={args.qat_lr}", f"--qat_loss={args.qat_loss}"]
    t0 = time.perf_counter()
    run([sys.executable, "quant_model.py", *settings, *widths], os.path.join(quant_dir, "quant.log"))
    quantize_seconds = time.perf_counter() - t0
    report = os.path.join(quant_dir, "test.json")
    columns = "raw,c" if args.numpy_on_peer_images else "raw,np,c"
    run([sys.executable, "test_model.py", *settings, f"--columns={columns}", f"--limit={args.limit}",
         f"--json={report}"], os.path.join(quant_dir, "test.log"))
    with open(report) as f:
        test = json.load(f)
    return {"peer_work": peer_work(model, quant_dir, args), "model": model, "weight_bits": weight_bits, "act_bits": act_bits,
            "weight_method": "auto (gptq below 8 bits)", "bias_correction": args.bias_correction, "calib_images": CALIB_IMAGES,
            "calib_method": "auto (mse below 8 bits)",
            "ends_at_8": args.ends_at_8, "qat_epochs": args.qat_epochs,
            "qat_loss": args.qat_loss if args.qat_epochs else None, "qat_lr": args.qat_lr if args.qat_epochs else None,
            "command": " ".join(["quant_model.py", *settings[:1], *widths]), "seconds_quantize": round(quantize_seconds, 1),
            "cpu": cpu(), "commit": commit, "test": test}


def ends_at_8(model, quant_dir, args):
    """A --bits file in quant_dir keeping the model's first and last conv / linear layers at 8-bit weights
    (as FINN and the low-bit papers do: the first sees raw pixels, the last makes the logits); their
    names come from a quick 8-bit quantization on two images."""
    names_dir = os.path.join(quant_dir, "layer_names")
    run([sys.executable, "quant_model.py", f"--model={model}", f"--quant_dir={names_dir}",
         f"--threads={args.threads}", "--calib_images=2"], os.path.join(quant_dir, "layer_names.log"))
    _, quant_list = load_tuple(os.path.join(names_dir, f"{model}_quant.tuple"), model)
    weighted = [op["name"] for op in quant_list if "weight_bits" in op]
    path = os.path.join(quant_dir, "ends_at_8.json")
    with atomic_open(path, "w") as f:
        json.dump({weighted[0]: {"weight_bits": 8}, weighted[-1]: {"weight_bits": 8}}, f)
    return path


def code_version():
    """The commit that measured (`git describe --always --dirty`), '' outside a git checkout."""
    proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def peer_work(model, quant_dir, args):
    """The C engine's accuracy on the first --peer_images test images, the ones the peer's table is
    measured on, and numpy's there when the full-set run left it out (--numpy_on_peer_images)."""
    report = os.path.join(quant_dir, "peer_work.json")
    run([sys.executable, "test_model.py", f"--model={model}", f"--quant_dir={quant_dir}", f"--threads={args.threads}",
         "--columns=raw,np,c" if args.numpy_on_peer_images else "--columns=raw,c",
         f"--limit={args.peer_images}", f"--json={report}"], os.path.join(quant_dir, "peer_work.log"))
    with open(report) as f:
        test = json.load(f)
    return {"images": test["images"], "float": test["accuracy"]["raw"], "c_int8": test["accuracy"]["c_int8"],
            **({"np_quant": test["accuracy"]["np_quant"], "identical_logits": test["identical_logits"]}
               if "np_quant" in test["accuracy"] else {})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated built-in models")
    parser.add_argument("--widths", type=parse_widths, default=parse_widths(",".join(WIDTHS)),
                        help="weight/activation bits, comma-separated (default 4/8,3/8)")
    parser.add_argument("--limit", type=int, default=10000, help="test images (default: the whole test set)")
    parser.add_argument("--peer_images", type=int, default=2000,
                        help="also the accuracy on the first N test images, the peer table's (default 2000)")
    parser.add_argument("--numpy_on_peer_images", action="store_true",
                        help="the numpy column on the first --peer_images images only (it is the slow one)")
    parser.add_argument("--threads", type=int, default=0, help="passed to the stages (0 = every CPU)")
    parser.add_argument("--bias_correction", default="auto", choices=("auto", "on"),
                        help="quant_model.py's --bias_correction (default auto: empirical below 8 bits; on: "
                             "each layer on the float model's inputs)")
    parser.add_argument("--ends_at_8", action="store_true",
                        help="keep the first and last conv / linear layers at 8-bit weights (a --bits file)")
    parser.add_argument("--qat_epochs", type=int, default=0,
                        help="quant_model.py's --qat_epochs: fine-tuning after the post-training methods")
    parser.add_argument("--qat_lr", type=float, default=QAT_LR,
                        help=f"its --qat_lr (default {QAT_LR:g}, the CIFAR-10 networks')")
    parser.add_argument("--qat_loss", default="labels", choices=("labels", "distill"),
                        help="its --qat_loss (default labels)")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "results", "low_bit"))
    parser.add_argument("--work_dir", default="", help="where the tuples go (default: a temporary folder)")
    parser.add_argument("--overwrite", action="store_true", help="measure again what --out_dir already holds")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="fpgai_low_bit_")
    for model in args.models.split(","):
        for weight_bits, act_bits in args.widths:
            variant = ("" if args.bias_correction == "auto" else f"_{args.bias_correction}") + \
                ("_ends8" if args.ends_at_8 else "") + (f"_qat{args.qat_epochs}" if args.qat_epochs else "") + \
                ("_distill" if args.qat_epochs and args.qat_loss == "distill" else "") + \
                (f"_lr{args.qat_lr:g}" if args.qat_epochs and args.qat_lr != QAT_LR else "")
            out = os.path.join(args.out_dir, f"{model}_w{weight_bits}a{act_bits}{variant}.json")
            if os.path.exists(out) and not args.overwrite:
                print(f"{out}: kept (--overwrite measures it again)")
                continue
            result = measure(model, weight_bits, act_bits,
                             os.path.join(work, f"{model}_w{weight_bits}a{act_bits}{variant}"), args)
            with atomic_open(out, "w") as f:
                json.dump(result, f, indent=1)
            acc = result["test"]["accuracy"]
            print(f"{model} W{weight_bits}A{act_bits}: float {acc['raw'] * 100:.2f}%, C {acc['c_int8'] * 100:.2f}% on "
                  f"{result['test']['images']} images -> {out}")


if __name__ == "__main__":
    main()
