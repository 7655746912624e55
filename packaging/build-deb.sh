#!/usr/bin/env bash
# Build the .deb: generate the man page and completions from the CLI definition, then package
# with cargo-deb. Usage: packaging/build-deb.sh [--profile dev|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--profile" ]; then profile=$2; fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
# The tests pass the binary they already built (cargo holds its build lock while tests run).
if [ -z "${RUNNER_MEDIC_PREBUILT:-}" ]; then
  cargo build --locked --profile "$profile" --bin runner-medic
fi
bin="target/$dir/runner-medic"
assets=target/deb-assets
rm -rf "$assets" && mkdir -p "$assets/completions"
"$bin" man > "$assets/runner-medic.1"
gzip -9n -f "$assets/runner-medic.1"
"$bin" completions bash > "$assets/completions/runner-medic"
"$bin" completions zsh > "$assets/completions/_runner-medic"
"$bin" completions fish > "$assets/completions/runner-medic.fish"
cargo deb --locked --no-build --profile "$profile" "${@:3}"
