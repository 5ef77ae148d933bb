#!/usr/bin/env bash
# Download the GitHub webhook examples of npm @octokit/webhooks-examples into a
# cache folder for test_octokit_examples.py.
#
# Usage: bash tests/e2e/fetch_fixtures.sh [CACHE_DIR]
# CACHE_DIR defaults to tests/e2e/.cache. The package is unpacked to
# CACHE_DIR/octokit-webhooks-examples-7.6.1/; a second run finds it there and
# downloads nothing.
set -euo pipefail

PACKAGE="@octokit/webhooks-examples"
VERSION="7.6.1"
# SHA-256 of the registry tarball webhooks-examples-7.6.1.tgz (its npm shasum
# is ed0ecd42fa3fc559252448562b60980e15cef8b5).
TARBALL_SHA256="89e6cb1c6345d32e3dd775617fa54effbdc26c859e514898d7728e95e9738280"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${1:-$script_dir/.cache}"
destination="$cache_dir/octokit-webhooks-examples-$VERSION"

if [[ -f "$destination/api.github.com/index.json" ]]; then
    echo "$PACKAGE@$VERSION is already in $destination"
    exit 0
fi

mkdir -p "$cache_dir"
work_dir="$(mktemp -d "$cache_dir/fetch.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

tarball="$(npm pack --silent --pack-destination "$work_dir" "$PACKAGE@$VERSION")"
tarball_path="$work_dir/$tarball"

actual_sha256="$(sha256sum "$tarball_path" | cut -d' ' -f1)"
if [[ "$actual_sha256" != "$TARBALL_SHA256" ]]; then
    echo "error: $tarball has SHA-256 $actual_sha256, expected $TARBALL_SHA256" >&2
    exit 1
fi

tar -xzf "$tarball_path" -C "$work_dir"
rm -rf "$destination"
mv "$work_dir/package" "$destination"
echo "unpacked $PACKAGE@$VERSION into $destination"
