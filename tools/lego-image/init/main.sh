# Main part of the LegoVMM guest /init.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
lego_load_modules /etc/lego/modules
echo LEGO_GUEST_READY
if ! lego_run "$(cat /proc/cmdline)"; then
    setsid cttyhack sh -l
fi
sync
poweroff -f
# Only reached if power-off failed; never let PID 1 exit.
reboot -f
while :; do sleep 3600; done
