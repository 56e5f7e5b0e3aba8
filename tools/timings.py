"""Time what a newcomer runs, on a fresh clone, and write results/timings.json (the README's times).

    python tools/timings.py [--ci] [--out results/timings.json]

In a temporary clone of this checkout's HEAD (the mirror from FPGAI_MIRROR or ../shared/datasets):
`make demo` with no .venv (the virtual environment included), `make demo` again, `make test-fast`,
one LeNet training epoch (train_model.py --epochs=1: the per-epoch time make demo-train's summary
quotes) and, with --ci, .ci/run's steps: its toolchain installs and `make test`. Each row names the
command, the condition and the seconds; the file names the CPU. The first demo's summary table goes
to results/demo_summary.txt (the README shows it). Run it on a quiet machine: the figures are
wall-clock times.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.machine import cpu  # noqa: E402


def timed(command, cwd, env, log):
    """Seconds `command` (a shell line) took in cwd; its output goes to log (replaced); a failure stops
    the script."""
    print(f"$ {command}", flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run(command, shell=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        with open(log, errors="replace") as f:
            tail = f.read()[-3000:]
        sys.exit(f"{tail}\nerror: `{command}` failed ({proc.returncode}); the end of its output is above")
    print(f"  {seconds:.1f} s", flush=True)
    return seconds


def demo_summary(log, path):
    """The summary table at the end of make demo's output (log), written to path for the README."""
    with open(log, errors="replace") as f:
        text = f.read()
    with open(path + ".tmp", "w") as f:
        f.write(text[text.rindex("demo summary:"):].rstrip() + "\n")
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="also time .ci/run's steps (about half an hour)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "timings.json"))
    args = parser.parse_args()
    mirror = os.path.abspath(os.environ.get("FPGAI_MIRROR", os.path.join(ROOT, "..", "shared", "datasets")))
    env = dict(os.environ, FPGAI_MIRROR=mirror)
    env.pop("VIRTUAL_ENV", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fpgai-timings-") as tmp:
        clone, log = os.path.join(tmp, "fpgai"), os.path.join(tmp, "log.txt")
        subprocess.run(["git", "clone", "--quiet", ROOT, clone], check=True)
        rows.append(("make demo", "fresh clone, .venv included", timed("make demo", clone, env, log)))
        demo_summary(log, os.path.join(os.path.dirname(args.out), "demo_summary.txt"))
        rows.append(("make demo", ".venv and c/inference built", timed("make demo", clone, env, log)))
        rows.append(("make test-fast", ".venv built", timed("make test-fast", clone, env, log)))
        epoch = "train_model.py --model=lenet --epochs=1"
        rows.append((epoch, "one LeNet epoch, 55,000 images, .venv built",
                     timed(f".venv/bin/python {epoch} --pretrained_dir=runs/epoch", clone, env, log)))
        if args.ci:
            installs = "sh c/fuzz/install-clang.sh && sh c/mcu/install-toolchain.sh"
            rows.append((".ci/run: toolchain installs", "already installed on this machine",
                         timed(installs, clone, dict(env, CI="true"), log)))
            rows.append(("make test", ".venv built; it makes the C binaries its tests run", timed("make test", clone, env, log)))
    report = {"cpu": cpu(), "date": datetime.date.today().isoformat(),
              "timings": [{"command": c, "condition": w, "seconds": round(s, 1)} for c, w, s in rows]}
    old = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    if old.get("cpu") == report["cpu"]:   # keep the rows this run did not measure (make test without --ci)
        measured = {(r["command"], r["condition"]) for r in report["timings"]}
        report["timings"] += [r for r in old.get("timings", []) if (r["command"], r["condition"]) not in measured]
    with open(args.out + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
