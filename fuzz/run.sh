#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails if any of them finds a
# crash (a panic, or a 5xx from the API).
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]    (default 30)
#
# Installs cargo-fuzz 0.13.2 into $HOOKD_CI_CACHE (default ~/.cache/hookd-ci)
# when it is missing. Builds with `--sanitizer none`, because AddressSanitizer
# needs `-Zsanitizer`, which stable Rust rejects, and hookd has no unsafe Rust
# code for it to check. Inputs that crash are saved under
# fuzz/artifacts/<target>/; new corpus entries go to fuzz/corpus/<target>/.
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET], a whole number of seconds, got ${seconds@Q}" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"
cache="${HOOKD_CI_CACHE:-$HOME/.cache/hookd-ci}"
cargo_fuzz_version=0.13.2
tools="$cache/cargo-fuzz-$cargo_fuzz_version"

if [[ ! -x "$tools/bin/cargo-fuzz" ]]; then
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# cargo-fuzz looks for the binaries in fuzz/target, so a target folder set
# for the main crate must not apply here.
unset CARGO_TARGET_DIR

# The API target's store lives here, and is removed even after a crash.
scratch="$(mktemp -d "$( [[ -d /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}" )/hookd-fuzz-run.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export HOOKD_FUZZ_TMPDIR="$scratch"

cargo fuzz build --sanitizer none

failed=()
for target in $(cargo fuzz list); do
    options=(-max_total_time="$seconds" -timeout=10)
    if [[ "$target" == api_json ]]; then
        # Room for bodies larger than the harness's 1024-byte payload limit.
        options+=(-dict=api_json.dict -max_len=8192)
    fi
    printf '\n==> %s for %s s\n' "$target" "$seconds"
    if ! cargo fuzz run --sanitizer none "$target" -- "${options[@]}"; then
        failed+=("$target")
    fi
done

if (( ${#failed[@]} > 0 )); then
    echo "fuzz targets that failed: ${failed[*]}; the inputs are in fuzz/artifacts/" >&2
    exit 1
fi
echo "every fuzz target ran for $seconds s without a crash"
