#!/usr/bin/env bash
# LegoVMM's main job on one machine: a manager, a memory monitor and a storage monitor, and a
# vNode with 128 MiB of local RAM, 1 GiB of remote memory and a remote disk, running a 512 MiB
# workload that checks every page; then a summary. legovmm runs on this host's KVM when it can
# boot stock kernels, else inside the nested-KVM testbed's compute host (with the daemons).
#
# Prints one line per phase with the time since the start, live figures while the workload
# runs, and the summary; every log (set-up, build, consoles, daemons) goes to a log folder
# whose path it prints. --verbose prints everything as it happens instead.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
Usage: tools/demo.sh [--verbose] [WORKLOAD_MIB]

Runs the LegoVMM demo: a cluster (manager, memory monitor, storage monitor) and a vNode with
128 MiB of RAM, 1 GiB of remote memory and a remote disk, through a workload that writes and
checks WORKLOAD_MIB MiB (default 512), then relaunches the vNode to read its remote disk back.

  --verbose   print every log line (kernels, VMMs, daemons) as it happens
  -h, --help  this text

Logs go to .cache/demo/<time>/ (printed at the start).
EOF
}

verbose=0
workload=512
for arg in "$@"; do
    case "$arg" in
        -v | --verbose) verbose=1 ;;
        -h | --help) usage; exit 0 ;;
        '' | *[!0-9]*) echo "demo: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
        *) workload=$arg ;;
    esac
done

logs=.cache/demo/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
epoch=$(date +%s.%N)
export LEGO_PROGRESS_EPOCH=$epoch

phase() {
    awk -v now="$(date +%s.%N)" -v t0="$epoch" -v text="$*" \
        'BEGIN { printf "[%6.1f s] %s\n", now - t0, text }'
}

# quietly LOG CMD...: runs CMD with its output in $logs/LOG (and on the terminal with
# --verbose); on failure prints the log's last lines and stops.
quietly() {
    local log=$logs/$1
    shift
    if [ "$verbose" = 1 ]; then
        "$@" 2>&1 | tee -a "$log"
        return "${PIPESTATUS[0]}"
    fi
    if ! "$@" >> "$log" 2>&1; then
        echo "demo: '$*' failed; the last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}

phase "demo: logs in $logs"
phase "set-up: checking the packages the demo needs"
quietly setup.log tools/setup.sh
phase "build: legovmm, lego-vhost-blk, the monitors, legoctl and the testbed (release)"
quietly build.log cargo build --release -p legovmm -p lego-vhost-blk -p lego-monitors -p legoctl \
    -p lego-testbed -p lego-image
phase "guest image: the stock Debian cloud kernel and a small initramfs"
quietly image.log cargo run --release -q -p lego-image -- build
eval "$(target/release/lego-image path)"

jobdir=$(mktemp -d)
trap 'rm -rf "$jobdir"' EXIT
{
    echo "export LEGO_CLUSTER_KEY=$(target/release/legoctl keygen)"
    echo "export WORKLOAD_MIB=$workload"
    cat tools/demo/remote-vnode.sh
} > "$jobdir/demo.sh"
files=(--file tools/vnode-bridge.sh)
for bin in lego-vhost-blk lego-manager lego-memory-monitor lego-storage-monitor legoctl; do
    files+=(--file "target/release/$bin")
done
collect=()
for f in summary.txt cluster.txt status.txt memory-stats.txt manager.log memory-monitor.log \
    storage-monitor.log bridge.txt first.console first.err second.console second.err; do
    collect+=(--collect "$f")
done
# The testbed prints progress lines on standard output and its own messages and (with
# --verbose) the consoles on standard error.
testbed=(target/release/lego-testbed --legovmm target/release/legovmm
    --l1-cmdline-extra lego.shmem_thp=advise)
run=(run --script "$jobdir/demo.sh" --file "$kernel" --file "$initramfs" "${files[@]}"
    --timeout 1500 --ready-marker LEGO_VNODE_START --ready-timeout 240 --retries 2
    "${collect[@]}" --out "$logs")
phase "compute host: starting (legovmm runs there, on its KVM)"
set +e
if [ "$verbose" = 1 ]; then
    "${testbed[@]}" "${run[@]}" 2>&1 | tee "$logs/testbed.log"
    status=${PIPESTATUS[0]}
else
    "${testbed[@]}" --progress "${run[@]}" 2>> "$logs/testbed.log"
    status=$?
fi
set -e
cp .cache/testbed/logs/demo.console.log "$logs/compute-host.console.log" 2> /dev/null || true
if [ "$status" != 0 ] || [ ! -s "$logs/summary.txt" ]; then
    phase "demo FAILED (status $status); the testbed said:"
    grep -v '^\[' "$logs/testbed.log" | tail -n 15 >&2 || true
    echo "--- the compute host's last console lines ($logs/compute-host.console.log) ---" >&2
    tail -n 40 "$logs/compute-host.console.log" >&2 || true
    exit 1
fi
phase "done"
echo
echo "== summary"
cat "$logs/summary.txt"
echo
echo "logs: $logs"
