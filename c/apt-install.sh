#!/bin/sh
# apt-install.sh WHO PACKAGE...: install Debian/Ubuntu packages for one of the toolchain scripts
# (c/fuzz/install-clang.sh, c/mcu/install-toolchain.sh), as root or with passwordless sudo, quietly;
# apt-get update runs only when the first try fails.  Exit 0 when apt-get succeeded, 1 when it
# failed (the caller's own check says what is missing), 2 with one message naming WHO when nothing
# can be installed here (not root, no apt-get).
set -u
who=$1
shift
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else echo "$who: missing and not root (apt-get install $*)" >&2; exit 2
fi
command -v apt-get >/dev/null 2>&1 || { echo "$who: no apt-get; install $* by hand" >&2; exit 2; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}
apt_install "$@" || { $SUDO apt-get update -qq >/dev/null 2>&1; apt_install "$@"; }
