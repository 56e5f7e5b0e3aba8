"""The last step of `make demo`: one table of what the demo measured and made.

    python tools/demo_summary.py runs/demo [MODEL]

Reads DEMO/test.json (test_model.py --json), lists every file under DEMO with its size, and says
how to retrain with the epoch time of results/timings.json (the CPU it was measured on named).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.machine import cpu  # noqa: E402

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
TITLES = {"raw": "raw (float)", "quant": "quant (torch int)", "np_quant": "np quant", "c_int8": "C INT8"}
# what each file of the demo is, by its name's ending
ROLES = {"_quant.tuple": "the integer graph: (state_dict, quant_list)",
         "_weight.txt": "weights and biases as text",
         "_weight.bin": "weights, int8, layer by layer",
         "_bias.bin": "biases, int32 little-endian",
         "_quant.txt": "scale,shift,zero_point per layer",
         "_model.bin": "the graph the C engine runs",
         "test.json": "test_model.py's report",
         "_raw.pth": "float weights (make demo-train)",
         "_training.png": "training curves (make demo-train)"}


def identical_cell(identical, column, n):
    """'10000/10000 = np quant' for the columns compared with the numpy specification."""
    for key, frac in identical.items():
        a, b = key.split("_vs_")
        if column in (a, b) and column != "np_quant":
            return f"{round(frac * n)}/{n} = np quant"
    return "(the specification)" if column == "np_quant" and identical else ""


def files_table(demo):
    rows = []
    for folder, _, names in os.walk(demo):
        for name in sorted(names):
            path = os.path.join(folder, name)
            role = next((text for end, text in ROLES.items() if name.endswith(end)), "")
            rows.append((os.path.relpath(path, demo), os.path.getsize(path), role))
    return sorted(rows)


def epoch_seconds(model):
    """(seconds per training epoch, CPU) measured by tools/timings.py, or None."""
    path = os.path.join(ROOT, "results", "timings.json")
    try:
        with open(path) as f:
            timings = json.load(f)
    except (OSError, ValueError):
        return None
    for row in timings.get("timings", []):
        if row.get("command", "").startswith(f"train_model.py --model={model} --epochs=1"):
            return row["seconds"], timings.get("cpu", "?")
    return None


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2].strip())
    demo, model = argv[1], argv[2] if len(argv) == 3 else "lenet"
    report_path = os.path.join(demo, "test.json")
    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {report_path}: {err}")
    n, identical = report["images"], report.get("identical_logits", {})
    print(f"\ndemo summary: {report['model']} on the {DATASETS.get(report['dataset'], report['dataset'])} test set, {n} images, on {cpu()}")
    print(f"  {'engine':<18} {'accuracy':>9} {'images/s':>9}   identical integer logits")
    for column, accuracy in report["accuracy"].items():
        speed = n / report["seconds"][column] if report["seconds"].get(column) else float("nan")
        print(f"  {TITLES.get(column, column):<18} {accuracy * 100:>8.2f}% {speed:>9.0f}   "
              f"{identical_cell(identical, column, n)}".rstrip())
    rows = files_table(demo)
    print(f"\nfiles written under {demo}/ ({len(rows)} files, {sum(r[1] for r in rows):,} bytes):")
    for rel, size, role in rows:
        print(f"  {rel:<36} {size:>9,} bytes  {role}")
    measured = epoch_seconds(model)
    per_epoch = (f"; one epoch took {measured[0]:.0f} s on {measured[1]} (results/timings.json)"
                 if measured else "")
    print(f"\nretrain: make demo-train (the shipped recipe, into {demo}/pretrained{per_epoch}),\n"
          f"or python train_model.py --model={model} --pretrained_dir=DIR [--epochs=N]")


if __name__ == "__main__":
    main(sys.argv)
