#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, as CI does: FUZZ_SECONDS each
# (default 20), starting from a scratch copy of the committed seeds. Fails if
# any target crashes; the input that did is left in fuzz/artifacts/<target>/.
#
# The targets are built without a sanitizer (`-s none`): herald-core has no
# unsafe code, so what fuzzing can find there is panics, which need none.
# That also keeps every flag cargo-fuzz passes stable, so the stable toolchain
# builds them as it is; AddressSanitizer would need RUSTC_BOOTSTRAP=1 for
# `-Zsanitizer`, a longer build and slower runs. Debug assertions and overflow
# checks stay on (`-a`), as in the test suite.
set -euo pipefail

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
seconds=${FUZZ_SECONDS:-20}
flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --release --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
cargo fuzz build "${flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

targets=$(cargo fuzz list --fuzz-dir "$fuzz_dir")
crashed=0
for target in $targets; do
    # libFuzzer writes what it finds into the corpus directory it is given.
    cp -r "$fuzz_dir/corpus/$target" "$scratch/$target"
    log="$scratch/$target.log"
    if cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" -- \
        -max_total_time="$seconds" -timeout=10 >"$log" 2>&1; then
        # libFuzzer's closing line: executions, coverage, corpus, exec/s.
        echo "$target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)"
    else
        echo "$target: CRASHED"
        # All but the progress lines: the panic, the input, how to reproduce.
        grep -vE '^#[0-9]+[[:space:]]' "$log"
        crashed=$((crashed + 1))
    fi
done

count=$(echo "$targets" | wc -w)
echo "fuzz: $count targets for ${seconds}s each, $crashed crashed"
[ "$crashed" -eq 0 ]
