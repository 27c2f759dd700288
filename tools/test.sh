#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every LegoVMM test: unit tests, process and
# network-namespace tests of the daemons, and stock-kernel boots through legovmm (on the
# nested-KVM testbed where this host's KVM cannot boot stock kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stamp() { echo "== $* ($(( $(date +%s) - start )) s)" >&2; }

stamp "setup"
tools/setup.sh
stamp "format check"
cargo fmt --all -- --check
stamp "build (release)"
cargo build --release --workspace --all-targets
stamp "lint"
cargo clippy --release --workspace --all-targets -q -- -D warnings
stamp "guest image"
cargo run --release -q -p lego-image -- build
stamp "tests"
LEGOVMM_BIN="$PWD/target/release/legovmm" cargo test --release --workspace --no-fail-fast
stamp "done"
