# Functions of the LegoVMM guest /init (busybox sh). Kept apart from the main part so the
# host tests can source them and check the command line parsing and the device handling.

# lego_run_cmd CMDLINE: prints the value of lego.run= from a kernel command line.
# Accepts lego.run="quoted value with spaces" or lego.run=word. Returns 1 if absent.
lego_run_cmd() {
    _s=" $1"
    case "$_s" in
        *' lego.run="'*)
            _rest=${_s#* lego.run=\"}
            printf '%s\n' "${_rest%%\"*}"
            ;;
        *' lego.run='*)
            _rest=${_s#* lego.run=}
            _rest=${_rest%%[ 	]*}
            printf '%s\n' "$_rest"
            ;;
        *)
            return 1
            ;;
    esac
}

# lego_run CMDLINE: runs lego.run with sh -c and prints LEGO_RUN_EXIT=<status>.
# Returns 1 without running anything if the command line has no lego.run.
lego_run() {
    _cmd=$(lego_run_cmd "$1") || return 1
    sh -c "$_cmd"
    echo "LEGO_RUN_EXIT=$?"
}

# lego_load_modules LIST: insmod each module path listed (one a line), quietly; a module
# that is already present (built in or loaded) is not an error.
lego_load_modules() {
    [ -f "$1" ] || return 0
    while read -r _m; do
        [ -n "$_m" ] || continue
        if ! _out=$(insmod "$_m" 2>&1); then
            case "$_out" in
                *'File exists'*) ;;
                *) echo "lego-init: could not load $_m: $_out" ;;
            esac
        fi
    done < "$1"
}

# ---------------------------------------------------------------------------------------------
# Remote memory and remote disk.
#
# lego-vhost-blk gives each virtio disk a serial (/sys/block/vdX/serial, at most 20 bytes):
#   lego-remote-memory         remote memory: becomes swap
#   lego-remote-disk:<volume>  remote disk: mounted at /mnt/remote (formatted when empty)
#   lego-local:<name>          a plain local file: left alone
# Every failure prints one "LEGO_ERROR ..." line and the boot goes on.
#
# The host tests point these at a fake tree and define the device commands (mkswap, swapon,
# swapoff, mke2fs, mount, umount, sync) as shell functions, since busybox sh runs its own
# applets before anything on PATH.
LEGO_SYS=${LEGO_SYS:-/sys}
LEGO_DEV=${LEGO_DEV:-/dev}
LEGO_REMOTE_MOUNT=${LEGO_REMOTE_MOUNT:-/mnt/remote}
# What lego_attach_devices set up, for lego_detach_devices.
LEGO_SWAPS=
LEGO_REMOTE_DISK=

# lego_error WHAT OUTPUT...: prints a LEGO_ERROR line, with command output on the same line.
lego_error() {
    _what=$1
    shift
    _detail=$(printf '%s' "$*" | tr '\n\t' '  ')
    if [ -n "$_detail" ]; then
        echo "LEGO_ERROR $_what: $_detail"
    else
        echo "LEGO_ERROR $_what"
    fi
}

# lego_serial_kind SERIAL: prints memory, disk, local or other.
lego_serial_kind() {
    case "$1" in
        lego-remote-memory) echo memory ;;
        lego-remote-disk:*) echo disk ;;
        lego-local:*) echo local ;;
        *) echo other ;;
    esac
}

# lego_devices KIND: prints the names (vda, vdb, ...) of the virtio disks of that kind.
lego_devices() {
    for _p in "$LEGO_SYS"/block/vd*; do
        [ -r "$_p/serial" ] || continue
        _serial=$(cat "$_p/serial" 2>/dev/null) || continue
        if [ "$(lego_serial_kind "$_serial")" = "$1" ]; then
            echo "${_p##*/}"
        fi
    done
}

# lego_size_kb NAME: prints the size of /sys/block/NAME in KiB (0 if unreadable).
lego_size_kb() {
    _sectors=$(cat "$LEGO_SYS/block/$1/size" 2>/dev/null)
    case "$_sectors" in
        '' | *[!0-9]*) _sectors=0 ;;
    esac
    echo $((_sectors / 2))
}

# lego_swap_on NAME: makes the disk NAME swap and enables it; prints LEGO_SWAP_ON.
# busybox's swapon has no -p, so the kernel picks the priority (-2 for the first swap area,
# the highest of the automatic ones); remote memory is the guest's only swap.
lego_swap_on() {
    _dev=$LEGO_DEV/$1
    if ! _out=$(mkswap "$_dev" 2>&1); then
        lego_error "remote memory: mkswap $_dev failed" "$_out"
        return 1
    fi
    if ! _out=$(swapon "$_dev" 2>&1); then
        lego_error "remote memory: swapon $_dev failed" "$_out"
        return 1
    fi
    LEGO_SWAPS="$LEGO_SWAPS $_dev"
    echo "LEGO_SWAP_ON dev=$_dev size_kb=$(lego_size_kb "$1")"
}

# lego_fs_state DEV: prints "ext" when DEV holds an ext2/3/4 superblock (magic 0xEF53 at
# byte 1080), "empty" when its first 64 KiB are all zero, else "unknown" (some other data,
# or the device could not be read). Only "empty" is ever formatted, so neither a read error
# nor a foreign filesystem can cost data.
lego_fs_state() {
    _magic=$(od -An -tx1 -j 1080 -N 2 "$1" 2>/dev/null | tr -d ' \n')
    if [ "$_magic" = 53ef ]; then
        echo ext
    elif cmp -s -n 65536 "$1" /dev/zero; then
        echo empty
    else
        echo unknown
    fi
}

# lego_remote_disk NAME: mounts the disk NAME at $LEGO_REMOTE_MOUNT, making an ext2
# filesystem first when the disk is empty (busybox makes ext2; the built-in ext4 driver
# mounts it). Prints LEGO_REMOTE_DISK_FORMATTED (when it formats) and LEGO_REMOTE_DISK_MOUNTED.
lego_remote_disk() {
    _dev=$LEGO_DEV/$1
    _state=$(lego_fs_state "$_dev")
    case "$_state" in
        ext) ;;
        empty)
            if ! _out=$(mke2fs -L lego-remote -m 0 "$_dev" 2>&1); then
                lego_error "remote disk: mke2fs $_dev failed" "$_out"
                return 1
            fi
            echo "LEGO_REMOTE_DISK_FORMATTED dev=$_dev"
            ;;
        *)
            lego_error "remote disk: $_dev holds data that is not an ext filesystem (or cannot be read); not formatting it"
            return 1
            ;;
    esac
    if ! _out=$(mkdir -p "$LEGO_REMOTE_MOUNT" 2>&1); then
        lego_error "remote disk: cannot create $LEGO_REMOTE_MOUNT" "$_out"
        return 1
    fi
    if ! _out=$(mount -t ext4 "$_dev" "$LEGO_REMOTE_MOUNT" 2>&1); then
        lego_error "remote disk: mount $_dev on $LEGO_REMOTE_MOUNT failed" "$_out"
        return 1
    fi
    LEGO_REMOTE_DISK=$_dev
    echo "LEGO_REMOTE_DISK_MOUNTED dev=$_dev path=$LEGO_REMOTE_MOUNT"
}

# lego_attach_devices: swap on every remote memory disk, the first remote disk mounted.
lego_attach_devices() {
    for _name in $(lego_devices memory); do
        lego_swap_on "$_name"
    done
    for _name in $(lego_devices disk); do
        if [ -n "$LEGO_REMOTE_DISK" ]; then
            lego_error "remote disk: $LEGO_DEV/$_name left unmounted; only one remote disk is mounted (at $LEGO_REMOTE_MOUNT)"
        else
            lego_remote_disk "$_name"
        fi
    done
    return 0
}

# lego_umount_remote: unmounts $LEGO_REMOTE_MOUNT. If something still holds it, PID 1 ends
# all other processes and tries again; failing that it remounts read-only so the filesystem
# is at least clean, and returns 1.
lego_umount_remote() {
    umount "$LEGO_REMOTE_MOUNT" 2>/dev/null && return 0
    if [ "$$" = 1 ]; then
        echo "lego-init: $LEGO_REMOTE_MOUNT is busy; ending all processes"
        kill -TERM -1 2>/dev/null
        sleep 1
        kill -KILL -1 2>/dev/null
        sleep 1
    fi
    _out=$(umount "$LEGO_REMOTE_MOUNT" 2>&1) && return 0
    lego_error "remote disk: umount $LEGO_REMOTE_MOUNT failed" "$_out"
    if ! _out=$(mount -o remount,ro "$LEGO_REMOTE_MOUNT" 2>&1); then
        lego_error "remote disk: remounting $LEGO_REMOTE_MOUNT read-only failed" "$_out"
    fi
    sync
    return 1
}

# lego_detach_devices: before power-off, syncs and unmounts the remote disk (prints
# LEGO_REMOTE_DISK_UNMOUNTED) and turns swap off.
lego_detach_devices() {
    sync
    if [ -n "$LEGO_REMOTE_DISK" ]; then
        if lego_umount_remote; then
            echo "LEGO_REMOTE_DISK_UNMOUNTED dev=$LEGO_REMOTE_DISK path=$LEGO_REMOTE_MOUNT"
        fi
        LEGO_REMOTE_DISK=
    fi
    for _dev in $LEGO_SWAPS; do
        if ! _out=$(swapoff "$_dev" 2>&1); then
            lego_error "remote memory: swapoff $_dev failed" "$_out"
        fi
    done
    LEGO_SWAPS=
    return 0
}

# ---------------------------------------------------------------------------------------------
# Network.
#
# legovmm passes each network device's address on the command line as
#   lego.net=MAC,IP/PREFIX[,GATEWAY]
# (the vNode's address and MAC from the manager). The interface with that MAC comes up with
# the address and, when a gateway is given, a default route through it; each prints
#   LEGO_NET_UP dev=<if> ip=<ip/prefix> mac=<mac> gw=<gateway>
# The host tests point LEGO_NET_SYS at a fake tree and stub `ip` as a shell function.
LEGO_NET_SYS=${LEGO_NET_SYS:-/sys/class/net}

# lego_net_specs CMDLINE: prints the value of each lego.net= word, one a line.
lego_net_specs() (
    set -f
    for _w in $1; do
        case "$_w" in
            lego.net=*) echo "${_w#lego.net=}" ;;
        esac
    done
)

# lego_iface_with_mac MAC: prints the name of the interface whose address is MAC.
lego_iface_with_mac() {
    for _p in "$LEGO_NET_SYS"/*; do
        [ -r "$_p/address" ] || continue
        if [ "$(cat "$_p/address")" = "$1" ]; then
            echo "${_p##*/}"
            return 0
        fi
    done
    return 1
}

# lego_net_up CMDLINE: brings lo up and configures the device of every lego.net= word.
lego_net_up() {
    ip link set lo up 2>/dev/null
    for _spec in $(lego_net_specs "$1"); do
        _mac=${_spec%%,*}
        _rest=${_spec#*,}
        _ip=${_rest%%,*}
        _gw=
        case "$_rest" in *,*) _gw=${_rest#*,} ;; esac
        if [ "$_mac" = "$_spec" ] || [ -z "$_ip" ]; then
            lego_error "network: lego.net=$_spec is not MAC,IP/PREFIX[,GATEWAY]"
            continue
        fi
        # The driver may still be registering the interface: wait up to 5 s for it.
        _dev=
        _i=0
        while [ "$_i" -lt "${LEGO_NET_WAIT_TRIES:-50}" ]; do
            _dev=$(lego_iface_with_mac "$_mac") && break
            sleep 0.1
            _i=$((_i + 1))
        done
        if [ -z "$_dev" ]; then
            lego_error "network: no interface has the MAC $_mac"
            continue
        fi
        if ! _out=$(ip link set "$_dev" up 2>&1) || ! _out=$(ip addr add "$_ip" dev "$_dev" 2>&1); then
            lego_error "network: configuring $_dev with $_ip failed" "$_out"
            continue
        fi
        if [ -n "$_gw" ] && ! _out=$(ip route add default via "$_gw" dev "$_dev" 2>&1); then
            lego_error "network: the default route through $_gw failed" "$_out"
        fi
        echo "LEGO_NET_UP dev=$_dev ip=$_ip mac=$_mac gw=$_gw"
    done
    return 0
}
