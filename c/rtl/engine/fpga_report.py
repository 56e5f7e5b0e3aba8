"""make -C c fpga: the engine's figures on an FPGA -> results/fpga/{model}_{target}.json, printed too.

    fpga_report.py PNR_REPORT YOSYS_LOG RTL_JSON CYCLES OUT

PNR_REPORT: nextpnr's --report JSON (cells used, the clock's achieved Fmax); YOSYS_LOG: the synthesis
log (its last `stat`: the flip-flops, every SB_DFF* cell); RTL_JSON: the export's rtl.json (P, MACs per
image); CYCLES: a simulation's `rtl-sim:` line (cycles per image).
"""
import json
import os
import re
import sys


def report(pnr_path, yosys_log, rtl_path, cycles_path):
    pnr, rtl = json.load(open(pnr_path)), json.load(open(rtl_path))
    cycles = int(re.search(r"(\d+) cycles per image", open(cycles_path).read()).group(1))
    stat = open(yosys_log).read().rsplit("Printing statistics", 1)[-1]
    used = {k: v["used"] for k, v in pnr["utilization"].items()}
    fmax = min(v["achieved"] for v in pnr["fmax"].values())
    return {"target": "iCE40 UP5K (sg48)", "tools": "yosys synth_ice40 -dsp, nextpnr-ice40 --up5k, icepack",
            "logic_cells": used["ICESTORM_LC"], "flip_flops": sum(map(int, re.findall(r"SB_DFF\w*\s+(\d+)", stat))),
            "dsp": used["ICESTORM_DSP"], "ebr": used["ICESTORM_RAM"], "spram": used["ICESTORM_SPRAM"],
            "fmax_mhz": round(fmax, 2), "lanes": rtl["P"], "macs_per_image": rtl["MACS"], "cycles_per_image": cycles,
            "images_per_s": round(fmax * 1e6 / cycles, 1), "mac_utilisation": round(rtl["MACS"] / (rtl["P"] * cycles), 4)}


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    rep = report(*sys.argv[1:5])
    os.makedirs(os.path.dirname(sys.argv[5]) or ".", exist_ok=True)
    with open(sys.argv[5], "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    print(" ".join(f"{k}={v}" for k, v in rep.items() if k not in ("target", "tools")))
    print(f"wrote {sys.argv[5]}")
