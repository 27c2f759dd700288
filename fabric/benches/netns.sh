#!/bin/sh
# Two network namespaces joined by a veth pair, for `BENCH_NETNS=1 cargo bench -p
# lego-fabric --bench fabric_latency`. Nothing is added to the root namespace.
# Usage: netns.sh up | down   (root needed)
set -eu
S=lego-fab-srv
C=lego-fab-cli
case "${1:-}" in
up)
    ip netns add "$S"
    ip netns add "$C"
    ip -n "$C" link add lf-c type veth peer name lf-s netns "$S"
    ip -n "$C" addr add 10.201.0.1/24 dev lf-c
    ip -n "$S" addr add 10.201.0.2/24 dev lf-s
    for ns in "$S" "$C"; do ip -n "$ns" link set lo up; done
    ip -n "$C" link set lf-c up
    ip -n "$S" link set lf-s up
    ;;
down)
    ip netns del "$C" 2>/dev/null || true
    ip netns del "$S" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
