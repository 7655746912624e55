#!/usr/bin/env bash
# Build the .deb: generate the man pages and completions from the CLI definition, then package
# with cargo-deb. Usage: packaging/build-deb.sh [--profile dev|release]
# The .deb lands in target/package/debian/ (its path is the last line of the output).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--profile" ]; then profile=$2; fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
# The shipped binary is built without the `demo` feature, so it holds no simulated GitLab and no
# stand-in runner, and with `fleet-etcd` (etcd coordination of shared tokens; needs protoc). It
# has a target directory of its own: it never replaces the binary the tests run, and a test can
# build it while `cargo test` holds the lock of the main target directory.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/package}"
cargo build --locked --profile "$profile" --no-default-features --features fleet-etcd --bin runner-medic
bin="$CARGO_TARGET_DIR/$dir/runner-medic"
assets=target/deb-assets
rm -rf "$assets" && mkdir -p "$assets/completions" "$assets/man"
# runner-medic.1 and one page per command (runner-medic-rotate.1, …), as the binary has them.
"$bin" man --dir "$assets/man"
gzip -9n -f "$assets"/man/*.1
"$bin" completions bash > "$assets/completions/runner-medic"
"$bin" completions zsh > "$assets/completions/_runner-medic"
"$bin" completions fish > "$assets/completions/runner-medic.fish"
cargo deb --locked --no-build --profile "$profile" "${@:3}"
