#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ for SECONDS each (default 60), one after the other, with
# cargo-fuzz on nightly (see docs/fuzzing.md). New inputs go to fuzz/target/corpus/<target>/
# (ignored); the committed fuzz/corpus/<target>/ is only read, unless FUZZ_MERGE=1, which then
# merges into it the inputs that add coverage. Crashes land in fuzz/artifacts/<target>/ and make
# the script fail: minimise one (`cargo +nightly fuzz tmin <target> <file>`) and commit it under
# fuzz/regressions/<target>/, where the stable replay test picks it up.
#
#   cargo install cargo-fuzz --version 0.13.2 --locked    # once
#   bash scripts/fuzz.sh 300
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

secs="${1:-60}"
targets=(image_decode upload tag_filter)
declare -A max_len=([image_decode]=16384 [upload]=8192 [tag_filter]=4096)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "needs nightly and cargo-fuzz: rustup toolchain install nightly;" \
        "cargo install cargo-fuzz --version 0.13.2 --locked" >&2
    exit 2
fi

cargo +nightly fuzz build
failed=()
for t in "${targets[@]}"; do
    work="target/corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    echo "== $t: ${secs}s"
    if ! cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="${max_len[$t]}" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1; then
        failed+=("$t")
        continue
    fi
    if [[ "${FUZZ_MERGE:-0}" == 1 ]]; then
        cargo +nightly fuzz run "$t" "corpus/$t" "$work" -- -merge=1 -max_len="${max_len[$t]}"
    fi
done
if ((${#failed[@]})); then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crash in ${targets[*]} (${secs}s each)"
