#!/bin/sh
# Sets up (or removes) the bridge that joins a compute host's vNodes: their taps
# (legovmm --net tap=NAME,bridge=BRIDGE joins each one) and the host itself, which takes the
# gateway address of the manager's --vnode-subnet (10.99.0.1/24 for the default subnet).
# Needs root (CAP_NET_ADMIN). Works with iproute2 or busybox's ip.
#
#   tools/vnode-bridge.sh [--bridge NAME] [--gateway IP/PREFIX]   create it and bring it up
#   tools/vnode-bridge.sh [--bridge NAME] --down                  remove it
set -eu
bridge=lego0
gateway=10.99.0.1/24
down=
while [ $# -gt 0 ]; do
    case "$1" in
        --bridge) bridge=$2; shift 2 ;;
        --gateway) gateway=$2; shift 2 ;;
        --down) down=1; shift ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vnode-bridge: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$down" ]; then
    ip link del "$bridge" 2>/dev/null || echo "vnode-bridge: there is no bridge $bridge" >&2
    exit 0
fi
if ! [ -d "/sys/class/net/$bridge" ]; then
    if ! out=$(ip link add name "$bridge" type bridge 2>&1); then
        echo "vnode-bridge: cannot create the bridge $bridge: $out (root and the bridge module are needed)" >&2
        exit 1
    fi
elif ! [ -d "/sys/class/net/$bridge/bridge" ]; then
    echo "vnode-bridge: $bridge exists and is not a bridge" >&2
    exit 1
fi
if ! ip addr show dev "$bridge" | grep -q " ${gateway%%/*}/"; then
    ip addr add "$gateway" dev "$bridge"
fi
ip link set "$bridge" up
echo "vnode-bridge: $bridge is up with $gateway"
