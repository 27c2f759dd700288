#!/usr/bin/env bash
# Installs what LegoVMM's builds, tests and nested-KVM testbed need on Debian 12 (bookworm):
# every prerequisite a test checks for, since under CI=true a missing one fails the test
# (lego_testkit::prerequisite). Idempotent: a second run installs nothing and takes a second
# or two.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { echo "setup: $*" >&2; }

# QEMU must come from bookworm-backports, both halves at one version: qemu-system-x86 (the
# nested compute host, qboot.rom) and qemu-utils (qemu-img, qemu-nbd and qemu-storage-daemon,
# which moved there from qemu-system-common in 8.0; bookworm's own 7.2 conflicts with 10.0).
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to apt sources"
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    NEED_UPDATE=1
fi

# lego-image fetches the guest kernel and busybox with `apt-get download`: the lists must
# know linux-image-cloud-amd64 from the backports-enabled sources.
# (Captured first: with pipefail, `grep -q` closing the pipe early would fail the check.)
kernel_policy=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null || true)
qemu_policy=$(apt-cache policy qemu-system-x86 2>/dev/null || true)
if [ "${NEED_UPDATE:-0}" = 1 ] || ! grep -q "Candidate: [0-9]" <<<"$kernel_policy" ||
    ! grep -q "bookworm-backports" <<<"$qemu_policy"; then
    say "apt-get update"
    $SUDO apt-get update -q >/dev/null
fi

# runuser (the /dev/kvm permission test) and setpriv (legovmm's unprivileged tap test) are
# util-linux's; ip (the network-namespace tests, taps and bridges) is iproute2's; /bin/busybox (the guest image) is busybox-static's; protoc (building
# the etcd client of lego-manager) is protobuf-compiler's; etcd (the manager fail-over tests)
# is etcd-server's.
missing=()
for pkg in cpio e2fsprogs iproute2 util-linux busybox-static protobuf-compiler etcd-server; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
backports=()
command -v qemu-system-x86_64 >/dev/null || backports+=(qemu-system-x86)
if ! command -v qemu-storage-daemon >/dev/null || ! command -v qemu-nbd >/dev/null ||
    ! command -v qemu-img >/dev/null; then
    backports+=(qemu-utils)
fi
if [ ${#backports[@]} -gt 0 ]; then
    say "installing ${backports[*]} from bookworm-backports"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports "${backports[@]}" >/dev/null
fi
for f in /usr/share/qemu/qboot.rom /usr/bin/qemu-storage-daemon /usr/sbin/runuser /usr/bin/setpriv \
    /bin/busybox /usr/bin/protoc /usr/bin/etcd; do
    [ -e "$f" ] || { say "$f is still missing after the installs"; exit 1; }
done
# Taps (legovmm --net and its tests) need the tun driver; load it if its node is missing.
[ -e /dev/net/tun ] || $SUDO modprobe tun 2>/dev/null || say "warning: /dev/net/tun is missing and the tun module would not load"
say "ready: $(qemu-system-x86_64 --version | head -1), $(cargo --version)"
