#!/bin/sh
# Run every fuzz target briefly on its seed corpus and its regression inputs
# (c/fuzz/regressions/<target>/, crashes found before, each must now pass).
# Usage: c/fuzz/smoke.sh [seconds per target]   (built by `make -C c fuzz`)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
for t in model weights_bin weights_txt mnist cifar npy; do
    bin="$here/bin/fuzz_$t"
    [ -x "$bin" ] || { echo "smoke: $bin missing (make -C c fuzz)" >&2; exit 1; }
    mkdir -p "$work/$t"
    dict=""
    case $t in
        model|weights_bin) dict="-dict=$here/model.dict" ;;
        weights_txt) dict="-dict=$here/weights_txt.dict" ;;
        npy) dict="-dict=$here/npy.dict" ;;
    esac
    dirs="$here/corpus/$t"
    [ -d "$here/regressions/$t" ] && dirs="$dirs $here/regressions/$t"
    # the first directory (a scratch copy) receives new inputs; the repository's stay as they are
    if ! "$bin" $dict -max_total_time="$secs" -runs=2000000 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
            -artifact_prefix="$work/$t-" -print_final_stats=1 "$work/$t" $dirs >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log" >&2
        echo "smoke: fuzz_$t FAILED" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    echo "smoke: fuzz_$t ok, $runs executions"
done
