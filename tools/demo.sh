#!/usr/bin/env bash
# LegoVMM's main job on one machine: a manager, a memory monitor and a storage monitor, and a
# vNode with 128 MiB of local RAM, 1 GiB of remote memory and a remote disk, running a 512 MiB
# workload that checks every page; then a summary. legovmm runs on this host's KVM when it can
# boot stock kernels, else inside the nested-KVM testbed's compute host (with the daemons).
# Usage: tools/demo.sh [WORKLOAD_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
echo "demo: building (release)" >&2
cargo build --release -q -p legovmm -p lego-vhost-blk -p lego-monitors -p legoctl -p lego-testbed -p lego-image
cargo run --release -q -p lego-image -- build > /dev/null
eval "$(target/release/lego-image path)"
script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
    echo "export LEGO_CLUSTER_KEY=$(target/release/legoctl keygen)"
    echo "export WORKLOAD_MIB=${1:-512}"
    cat tools/demo/remote-vnode.sh
} > "$script"
files=()
for bin in lego-vhost-blk lego-manager lego-memory-monitor lego-storage-monitor legoctl; do
    files+=(--file "target/release/$bin")
done
exec target/release/lego-testbed --legovmm target/release/legovmm run --script "$script" \
    --file "$kernel" --file "$initramfs" "${files[@]}" --timeout 1500 \
    --ready-marker LEGO_VNODE_START --ready-timeout 240 --retries 2
