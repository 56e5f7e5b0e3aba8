#!/bin/sh
# Make sure the RTL engine's open toolchain works (c/rtl/engine/, docs/fpga.md): Verilator (the engine's
# testbench), Icarus Verilog (the unit benches), yosys, nextpnr-ice40 and icepack (the UP5K bitstream);
# install them with apt-get if not (Debian 12: verilator 5.006, yosys 0.23, nextpnr-ice40 0.4,
# fpga-icestorm).  Idempotent and quiet: prints nothing and exits 0 when they are there; exit 1 with
# one message when they cannot be installed.
set -u
TOOLS="verilator iverilog vvp yosys nextpnr-ice40 icepack"
PKGS="verilator iverilog yosys nextpnr-ice40 fpga-icestorm"

works() {
    for tool in $TOOLS; do
        command -v $tool >/dev/null 2>&1 || return 1
    done
}

works && exit 0
sh "$(dirname "$0")/../apt-install.sh" install-tools $PKGS
[ $? = 2 ] && exit 1
works && exit 0
echo "install-tools: could not get $TOOLS working (apt-get install $PKGS)" >&2
exit 1
