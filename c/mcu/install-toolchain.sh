#!/bin/sh
# Make sure the Cortex-M toolchain, QEMU and Icarus Verilog work (arm-none-eabi-gcc with
# newlib-nano, qemu-system-arm, iverilog), and the aarch64 cross compiler with qemu-user (the C
# engine's NEON build, tests/test_c_kernels.py); install them with apt-get if not (Debian/Ubuntu,
# as root or with sudo).  Idempotent and quiet: prints nothing and exits 0 when they already work;
# exit 1 with one message when they cannot be installed.  Debian 12: gcc-arm-none-eabi
# libnewlib-arm-none-eabi qemu-system-arm iverilog gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# qemu-user.
set -u

works() {
    for tool in arm-none-eabi-gcc qemu-system-arm iverilog vvp aarch64-linux-gnu-gcc qemu-aarch64; do
        command -v $tool >/dev/null 2>&1 || return 1
    done
    tmp=$(mktemp -d) || return 1
    printf '%s\n' '#include <string.h>' 'void f(char *d, const char *s) { memcpy(d, s, 4); }' > "$tmp/t.c"
    arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb --specs=nano.specs -nostartfiles -Wl,-e,f -o "$tmp/t" "$tmp/t.c" \
        >/dev/null 2>&1 \
        && printf '%s\n' '#include <stdio.h>' 'int main(void) { puts("ok"); return 0; }' > "$tmp/h.c" \
        && aarch64-linux-gnu-gcc -o "$tmp/h" "$tmp/h.c" >/dev/null 2>&1 \
        && [ "$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$tmp/h" 2>/dev/null)" = ok ]
    rc=$?
    rm -rf "$tmp"
    return $rc
}

works && exit 0

PKGS="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm iverilog gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
sh "$(dirname "$0")/../apt-install.sh" install-toolchain $PKGS
[ $? = 2 ] && exit 1
works && exit 0
echo "install-toolchain: could not get arm-none-eabi-gcc (newlib-nano), qemu-system-arm, iverilog, aarch64-linux-gnu-gcc and qemu-aarch64 working (apt-get install $PKGS)" >&2
exit 1
