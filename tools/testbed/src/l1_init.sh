#!/bin/busybox sh
# /init of the LegoVMM testbed's compute host (L1). Markers on the console:
#   LEGO_L1_INIT, LEGO_L1_KVM=yes|no, LEGO_L1_NET=up|down (with lego.net=1 only),
#   LEGO_L1_DISK=..., LEGO_L1_JOB_EXIT=<rc>.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/tmp
mkdir -p /proc /sys /dev /tmp /mnt /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "LEGO_L1_INIT uptime=$(cut -d' ' -f1 /proc/uptime)"

cmdline=" $(cat /proc/cmdline) "

# Prints the parameters given on the kernel command line for module $1 (`kvm_amd.vgif=0`
# gives `vgif=0`): busybox's insmod, unlike modprobe, does not read them by itself.
module_params() {
    for w in $cmdline; do
        case "$w" in
            "$1".*=*) printf '%s ' "${w#"$1".}" ;;
        esac
    done
}

# Loads the modules listed in $1, in order.
load_modules() {
    while read -r m; do
        [ -n "$m" ] || continue
        name=$(basename "$m" .ko | tr - _)
        params=$(module_params "$name")
        [ -z "$params" ] || echo "LEGO_L1_MODULE_PARAMS $name $params"
        # shellcheck disable=SC2086 # one word per parameter
        out=$(insmod "/lib/modules/l1/$m" $params 2>&1) || case "$out" in
            *'File exists'*) ;;
            *) echo "LEGO_L1_MODULE_FAILED=$m: $out" ;;
        esac
    done < "$1"
}
load_modules /etc/lego/l1-modules

# Transparent huge pages: the kernel's defaults (Debian: shared memory never gets them)
# unless the command line says otherwise: `lego.thp=` sets `enabled` (anonymous memory),
# `lego.shmem_thp=` sets `shmem_enabled` (e.g. `advise`, as a host tuned for VMs would, so
# that a VMM's shared guest RAM asking with MADV_HUGEPAGE gets them).
thp=/sys/kernel/mm/transparent_hugepage
for w in $cmdline; do
    case "$w" in
        lego.thp=*) echo "${w#lego.thp=}" > $thp/enabled ;;
        lego.shmem_thp=*) echo "${w#lego.shmem_thp=}" > $thp/shmem_enabled ;;
    esac
done
echo "LEGO_L1_THP enabled=$(cat $thp/enabled 2>/dev/null) shmem=$(cat $thp/shmem_enabled 2>/dev/null)"
echo "LEGO_L1_KVM_AMD $(for p in nested npt avic vgif vls nrips lbrv; do printf '%s=%s ' $p "$(cat /sys/module/kvm_amd/parameters/$p 2>/dev/null)"; done)"

# A heartbeat on the console: the testbed counts a silent console as a hung compute host.
heartbeat=10
for w in $cmdline; do
    case "$w" in lego.heartbeat=*) heartbeat=${w#lego.heartbeat=} ;; esac
done
if [ "$heartbeat" -gt 0 ] 2>/dev/null; then
    (while sleep "$heartbeat"; do echo "LEGO_L1_ALIVE uptime=$(cut -d' ' -f1 /proc/uptime)"; done) &
fi

if [ -c /dev/kvm ]; then
    echo "LEGO_L1_KVM=yes uptime=$(cut -d' ' -f1 /proc/uptime)"
else
    echo "LEGO_L1_KVM=no (svm flags: $(grep -c -w svm /proc/cpuinfo) cpus)"
fi

# The network (slirp): only the 10.0.2.0/24 link, where 10.0.2.2 is the host's loopback.
# No default route, so nothing is sent past this machine.
net_up() {
    load_modules /etc/lego/l1-net-modules
    ip link set lo up
    n=0
    while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    if [ ! -e /sys/class/net/eth0 ]; then
        echo "LEGO_L1_NET=down no eth0 (virtio_net did not find the NIC)"
        return 1
    fi
    if ! out=$(ip link set eth0 up 2>&1 && ip addr add 10.0.2.15/24 dev eth0 2>&1); then
        echo "LEGO_L1_NET=down $out"
        return 1
    fi
    echo "LEGO_L1_NET=up addr=10.0.2.15 host=10.0.2.2 uptime=$(cut -d' ' -f1 /proc/uptime)"
    export LEGO_HOST_ADDR=10.0.2.2
}
case "$cmdline" in
    *' lego.net=1 '*) net_up ;;
esac

finish() {
    cd /
    sync
    umount /mnt 2>/dev/null || mount -o remount,ro /mnt 2>/dev/null
    sync
    echo "LEGO_L1_POWEROFF uptime=$(cut -d' ' -f1 /proc/uptime)"
    poweroff -f
    while :; do sleep 3600; done
}

n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
done
if ! mount -t ext4 /dev/vda /mnt; then
    echo "LEGO_L1_DISK=missing"
    echo "LEGO_L1_JOB_EXIT=255"
    finish
fi
echo "LEGO_L1_DISK=mounted"

# Put the VMM's shared libraries where its loader looks for them.
if [ -f /mnt/.lego/libs ]; then
    while read -r lib; do
        [ -n "$lib" ] || continue
        mkdir -p "${lib%/*}"
        [ -e "$lib" ] || ln -s "/mnt/.lego/root$lib" "$lib"
    done < /mnt/.lego/libs
fi

export JOB_DIR=/mnt/job
export LEGOVMM=/mnt/.lego/bin/legovmm
export LEGO_TESTBED_LIB=/mnt/.lego/lib.sh
export LEGO_TESTBED_MODE=nested
LEGO_TESTBED_TRY=$(cat /mnt/.lego/try 2>/dev/null || echo 1)
export LEGO_TESTBED_TRY
cd "$JOB_DIR" && sh ./job.sh < /dev/null
echo "LEGO_L1_JOB_EXIT=$?"
finish
