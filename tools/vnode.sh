#!/usr/bin/env bash
# Boots a vNode with legovmm and runs one command in it, printing the guest's console.
# On a host whose KVM cannot boot stock kernels (such as PVM) it runs legovmm inside the
# nested-KVM testbed's compute host. Usage: tools/vnode.sh [--vcpus N] [--memory SIZE] -- CMD...
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
echo "vnode: building legovmm and the testbed (release)" >&2
cargo build --release -q -p legovmm -p lego-testbed
exec target/release/lego-testbed vnode --legovmm target/release/legovmm "$@"
