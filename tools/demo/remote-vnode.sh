# The remote-memory vNode job, run on the compute host by lego-testbed (POSIX sh).
# It starts LegoVMM's remote side on this machine (a manager, a memory monitor and a storage
# monitor, as real processes talking over the fabric), launches a vNode with little local RAM
# plus remote memory and a remote disk (`legovmm --remote-memory --remote-disk`: legovmm starts
# the lego-vhost-blk backends, the manager places the memory and the volume), runs a
# memory-hungry workload that checks every page and writes a file to the remote disk, then
# launches the vNode again to read the file back, and prints a summary. The vNode is on the
# network: the job folder's vnode-bridge.sh sets up the compute host's bridge (lego0, the
# gateway 10.99.0.1/24 of the manager's default --vnode-subnet), legovmm joins the vNode's tap
# to it, and the manager gives the vNode its address; the workload pings the compute host.
#
# Parameters (environment, with defaults): LEGO_CLUSTER_KEY (required), GUEST_RAM (128M),
# REMOTE_MEMORY (1G), WORKLOAD_MIB (512), VOLUME (data), VOLUME_SIZE (256M), VNODE (1),
# REMOTE_SIDE (local: start the daemons here; host: they already run on the machine that
# runs the testbed, the manager at $LEGO_HOST_ADDR:${HOST_MANAGER_PORT:-17300} and the memory
# monitor at port ${HOST_MEMORY_PORT:-17100}, so every fabric request crosses the network).
. "$LEGO_TESTBED_LIB"
GUEST_RAM=${GUEST_RAM:-128M}
REMOTE_MEMORY=${REMOTE_MEMORY:-1G}
WORKLOAD_MIB=${WORKLOAD_MIB:-512}
VOLUME=${VOLUME:-data}
VOLUME_SIZE=${VOLUME_SIZE:-256M}
VNODE=${VNODE:-1}
REMOTE_SIDE=${REMOTE_SIDE:-local}
if [ "$REMOTE_SIDE" = host ]; then
    MANAGER=$LEGO_HOST_ADDR:${HOST_MANAGER_PORT:-17300}
    MEMORY_MONITOR=$LEGO_HOST_ADDR:${HOST_MEMORY_PORT:-17100}
else
    MANAGER=127.0.0.1:7300
    MEMORY_MONITOR=127.0.0.1:7100
fi

# The daemons talk over loopback, which a minimal compute-host init may leave down.
ip link set lo up 2> /dev/null || true
export LEGO_VHOST_BLK_BIN="$JOB_DIR/lego-vhost-blk"
if [ "$REMOTE_SIDE" = local ]; then
    mkdir -p state volumes
    ./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 > manager.log 2>&1 &
    manager=$!
    sleep 0.5
    ./lego-memory-monitor --listen $MEMORY_MONITOR --capacity 2G --manager $MANAGER --heartbeat-ms 200 > memory-monitor.log 2>&1 &
    memory_monitor=$!
    ./lego-storage-monitor --listen 127.0.0.1:7200 --data-dir volumes --capacity 2G --manager $MANAGER --heartbeat-ms 200 > storage-monitor.log 2>&1 &
    storage_monitor=$!
fi
if ! sh ./vnode-bridge.sh --bridge lego0 --gateway 10.99.0.1/24 > bridge.txt 2>&1; then
    cat bridge.txt
    echo "LEGO_SAY the compute host's bridge could not be set up (see above)"
    exit 1
fi
NET="--net tap=lgv$VNODE,bridge=lego0"
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 2 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
./legoctl --manager $MANAGER status > cluster.txt 2>&1
cat cluster.txt
echo "LEGO_SAY cluster up: $(grep -c alive cluster.txt) monitors alive, manager at $MANAGER"

# Live figures while the vNode runs (lego_vnode calls this every 10 s): pages the vNode's
# remote memory has sent to and fetched from the memory monitor so far.
lego_progress() {
    _stats=$(./legoctl --manager $MANAGER monitor-stats --kind memory --addr $MEMORY_MONITOR 2> /dev/null)
    _w=$(echo "$_stats" | grep -m1 '"pages_written":' | sed 's/[^0-9]//g')
    _r=$(echo "$_stats" | grep -m1 '"pages_read":' | sed 's/[^0-9]//g')
    [ -n "$_w" ] || return 0
    _now=$(cut -d' ' -f1 /proc/uptime | cut -d. -f1)
    _mib=$(( (_w + ${_r:-0}) / 256 ))
    _rate=""
    if [ -n "${_lp_mib:-}" ] && [ "$_now" -gt "$_lp_t" ]; then
        _rate=", $(( (_mib - _lp_mib) / (_now - _lp_t) )) MiB/s"
    fi
    _lp_mib=$_mib
    _lp_t=$_now
    echo "LEGO_PROGRESS remote memory: $((_w / 256)) MiB paged out, $((${_r:-0} / 256)) MiB paged in$_rate"
}

echo "LEGO_SAY vNode $VNODE: booting with $GUEST_RAM of RAM, $REMOTE_MEMORY of remote memory and a remote disk; workload: write and check $WORKLOAD_MIB MiB"
lego_vnode first 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory "$GUEST_RAM" --vcpus 1 \
    --vnode "$VNODE" --manager $MANAGER --remote-memory "$REMOTE_MEMORY" --remote-disk "$VOLUME,$VOLUME_SIZE" $NET \
    --cmdline "console=ttyS0 quiet lego.run=\"ping -c 2 -W 5 10.99.0.1; lego-guest-tools memtest --mib $WORKLOAD_MIB && grep -E '^(MemTotal|SwapTotal):' /proc/meminfo && grep -E '^pswp(in|out) ' /proc/vmstat && echo written-by-vnode-$VNODE > /mnt/remote/proof.txt\""
echo "LEGO_SAY vNode $VNODE: workload done (exit $(cat first.exit)); launching it again to read its remote disk"
lego_vnode second 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory "$GUEST_RAM" --vcpus 1 \
    --vnode "$VNODE" --manager $MANAGER --remote-disk "$VOLUME" $NET \
    --cmdline 'console=ttyS0 quiet lego.run="cat /mnt/remote/proof.txt"'

# A caller may add its own checks against the running cluster (the tests do).
if command -v lego_extra_checks > /dev/null 2>&1; then lego_extra_checks; fi

./legoctl --manager $MANAGER status > status.txt 2>&1
./legoctl --manager $MANAGER monitor-stats --kind memory --addr $MEMORY_MONITOR > memory-stats.txt 2>&1
if [ "$REMOTE_SIDE" = local ]; then
    kill $manager $memory_monitor $storage_monitor 2> /dev/null
    wait $manager $memory_monitor $storage_monitor 2> /dev/null
fi

# The summary, from the guest's console and the monitors' counters.
value() { grep -m1 "$1" "$2" | sed "s/.*$1[^0-9]*\([0-9]*\).*/\1/"; }
json() { grep -m1 "\"$1\":" "$2" | sed 's/[^0-9]//g'; }
mem_kb=$(value MemTotal first.console)
swap_kb=$(value SwapTotal first.console)
pswpin=$(value pswpin first.console)
pswpout=$(value pswpout first.console)
verify_ms=$(value verify_ms= first.console)
pages_written=$(json pages_written memory-stats.txt)
pages_read=$(json pages_read memory-stats.txt)
fabric_mib=$(( (${pages_written:-0} + ${pages_read:-0}) * 4 / 1024 ))
# The summary goes to summary.txt (tools/demo.sh prints it at the end) and the console.
say() { echo "$*" >> summary.txt; }
: > summary.txt
say "vNode $VNODE: local RAM ${mem_kb:-?} kB (MemTotal), remote memory ${swap_kb:-?} kB of swap on the memory monitor"
say "$(grep -m1 LEGO_MEMTEST first.console)"
net_ip=$(grep -m1 LEGO_NET_UP first.console | sed -n 's/.* ip=\([^ ]*\).*/\1/p')
net_mac=$(grep -m1 LEGO_NET_UP first.console | sed -n 's/.* mac=\([^ ]*\).*/\1/p')
again_ip=$(grep -m1 LEGO_NET_UP second.console | sed -n 's/.* ip=\([^ ]*\).*/\1/p')
pings=$(grep -m1 'packets transmitted' first.console)
say "network: vNode $VNODE at ${net_ip:-NO ADDRESS} (MAC ${net_mac:-?}, from the manager), ${again_ip:-NO ADDRESS} after relaunch; pinging the compute host 10.99.0.1: ${pings:-no answer}"
say "pages swapped out ${pswpout:-?}, swapped in ${pswpin:-?} (guest /proc/vmstat)"
if [ -n "$pswpin" ] && [ "${pswpin:-0}" -gt 0 ] && [ -n "$verify_ms" ]; then
    say "mean page-in cost during the verify pass: $(( verify_ms * 1000 / pswpin )) us per page swapped in (upper bound: includes the checking)"
fi
say "memory monitor: ${pages_written:-?} pages written, ${pages_read:-?} read: ${fabric_mib} MiB of page data over the fabric"
say "remote disk after relaunch: $(grep -m1 written-by-vnode second.console || echo MISSING)"
echo "== summary"
cat summary.txt
echo "LEGO_DEMO_DONE first=$(cat first.exit) second=$(cat second.exit)"
exit 0
