#!/usr/bin/env bash
# Long fuzzing runs (millions of executions): each target in turn for SECONDS (default 3600)
# through tests/fuzz/run.sh, with the stats line of each run collected at the end.
#     benchmarks/fuzz_long.sh [SECONDS] [targets...]     (default: gguf model tokenizer)
# Extra libFuzzer flags go in FUZZ_ARGS, e.g. FUZZ_ARGS="-jobs=2 -workers=2".
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-3600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf model tokenizer)
build="${BUILD_DIR:-$root/build-fuzz}"
status=0
for t in "${targets[@]}"; do
    # shellcheck disable=SC2086
    "$root/tests/fuzz/run.sh" "$t" "$seconds" ${FUZZ_ARGS:-} || status=1
    echo "fuzz_$t: $(grep -E '^#[0-9]+' "$build/findings/$t/log.txt" | tail -1)"
done
exit $status
