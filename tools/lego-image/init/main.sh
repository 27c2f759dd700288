# Main part of the LegoVMM guest /init.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
lego_load_modules /etc/lego/modules
# Lets go of hot-added devices when legovmm asks for them back (vm.remove-device).
lego-guest-tools hotplugd &
# Stops the workload when legovmm presses the power button (vm.shutdown).
lego-guest-tools powerd &
echo LEGO_GUEST_READY
# Remote memory becomes swap, the remote disk is mounted at /mnt/remote.
lego_attach_devices
# The vNode's address (lego.net= from legovmm) on its network device.
lego_net_up "$(cat /proc/cmdline)"
if ! lego_run "$(cat /proc/cmdline)"; then
    setsid cttyhack sh -l
fi
if [ -e /run/lego-power-button ]; then
    echo "LEGO_POWER_BUTTON_STOP"
fi
# Unmount the remote disk cleanly (and turn swap off) so what was written there lasts.
lego_detach_devices
sync
poweroff -f
# Only reached if power-off failed; never let PID 1 exit.
reboot -f
while :; do sleep 3600; done
