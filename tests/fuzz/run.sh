#!/usr/bin/env bash
# Run one libFuzzer target (or "all") for SECONDS each under ASan+UBSan:
#     tests/fuzz/run.sh TARGET|all SECONDS [extra libFuzzer args]
# TARGET: gguf, model, tokenizer, codec, cache_file (or fuzz_gguf ...).  Builds build-fuzz with clang if
# needed (BUILD_DIR overrides), writes the seed corpus (make_corpus.py) into
# $BUILD_DIR/corpus/<target>/seeds, grows $BUILD_DIR/corpus/<target>/work, uses
# tests/fuzz/<target>.dict, and leaves crash files in $BUILD_DIR/findings/<target>/.
# Exits non-zero on any finding.  PYTHON picks the interpreter (numpy + gguf needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
python="${PYTHON:-python3}"
[ $# -ge 2 ] || { echo "usage: $0 TARGET|all SECONDS [libFuzzer args]" >&2; exit 2; }
target="$1"; seconds="$2"; shift 2

if [ ! -f "$build/CMakeCache.txt" ]; then
    CC="${CC:-clang}" cmake -S "$root" -B "$build" -DTKV_BUILD_FUZZ=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" --target tkv_fuzz -j"${JOBS:-2}" >/dev/null

if [ ! -f "$build/corpus/.done" ]; then
    rm -rf "$build/corpus.tmp"
    "$python" "$here/make_corpus.py" "$build/corpus.tmp"
    mkdir -p "$build/corpus"
    for t in gguf model tokenizer codec cache_file; do
        rm -rf "$build/corpus/$t/seeds"
        mkdir -p "$build/corpus/$t"
        mv "$build/corpus.tmp/$t" "$build/corpus/$t/seeds"
    done
    rm -rf "$build/corpus.tmp"
    touch "$build/corpus/.done"
fi

if [ "$target" = all ]; then
    targets=(gguf model tokenizer codec cache_file)
else
    targets=("${target#fuzz_}")
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for t in "${targets[@]}"; do
    bin="$build/fuzz_$t"
    [ -x "$bin" ] || { echo "no target $bin" >&2; exit 2; }
    work="$build/corpus/$t/work"
    findings="$build/findings/$t"
    mkdir -p "$work" "$findings"
    echo "== fuzz_$t for ${seconds}s"
    start=$(date +%s)
    if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -dict="$here/$t.dict" -artifact_prefix="$findings/" -print_final_stats=1 \
        "$@" "$work" "$build/corpus/$t/seeds" >"$findings/log.txt" 2>&1; then
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units)" "$findings/log.txt" | tail -2
    else
        status=1
        echo "fuzz_$t: FINDING (log $findings/log.txt)" >&2
        grep -E "ERROR|runtime error|SUMMARY|Test unit written|deadly signal" \
            "$findings/log.txt" | head -8 >&2
    fi
    echo "   $(($(date +%s) - start))s"
done
exit $status
