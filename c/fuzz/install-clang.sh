#!/bin/sh
# Make sure clang with libFuzzer (-fsanitize=fuzzer,address,undefined) works; install it with
# apt-get if not (c/apt-install.sh: Debian/Ubuntu, as root or with sudo).  Idempotent and quiet:
# prints nothing and exits 0 when it already works; exit 1 with one message when it cannot be
# installed.
# Debian 12 packages: clang (-> clang-14, libclang-rt-14-dev, which holds libFuzzer).
set -u
CC=${FUZZ_CC:-clang}

works() {
    command -v "$CC" >/dev/null 2>&1 || return 1
    tmp=$(mktemp -d) || return 1
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' > "$tmp/t.c"
    "$CC" -fsanitize=fuzzer,address,undefined -o "$tmp/t" "$tmp/t.c" >/dev/null 2>&1
    rc=$?
    rm -rf "$tmp"
    return $rc
}

works && exit 0

APT="$(dirname "$0")/../apt-install.sh"
sh "$APT" install-clang clang
[ $? = 2 ] && exit 1
works && exit 0
# newer Debian/Ubuntu ship the sanitizer/libFuzzer runtimes separately
ver=$("$CC" -dumpversion 2>/dev/null | cut -d. -f1)
[ -n "$ver" ] && sh "$APT" install-clang "libclang-rt-$ver-dev"
works && exit 0
echo "install-clang: could not get a clang with -fsanitize=fuzzer working (apt-get install clang libclang-rt-N-dev)" >&2
exit 1
