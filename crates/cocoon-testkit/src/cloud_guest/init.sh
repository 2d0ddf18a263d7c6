#!/bin/sh
# /init of the UEFI test cloud image's initramfs: a stand-in for cloud-init's
# NoCloud datasource (reference/cocoon-behavior.md §9), in busybox sh. It
# finds the `cidata` disk, applies meta-data (hostname) and network-config
# (netplan v2 as the engine writes it: one MAC-matched entry per NIC with a
# static address or dhcp4), prints what it applied, and powers off (a guest
# named *-waits first waits for the ACPI power button).
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "cocoon-cloud: $*"; }
halt() {
  sync
  poweroff -f
  sleep 60
}
panic() {
  echo "cocoon-cloud: PANIC: $*"
  halt
}

say "initramfs up on $(uname -r)"
# virtio-pci, disks, NICs and FAT with the code pages vfat asks for are all
# modules in Debian's cloud kernel, and there is no modprobe to load them on demand.
for module in $(cat /etc/cocoon-modules); do
  insmod "/lib/modules/$module.ko" || panic "cannot load $module"
done

# The NoCloud disk is found by its label, as cloud-init does (cidata or CIDATA).
cidata=
tries=100
while [ -z "$cidata" ]; do
  cidata=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
  [ -n "$cidata" ] && break
  tries=$((tries - 1))
  [ "$tries" -gt 0 ] || panic "no disk labelled cidata after 10s: $(ls /sys/block)"
  sleep 0.1
done
say "cidata is $cidata"
mkdir -p /cidata
mount -t vfat -o ro "$cidata" /cidata || panic "cannot mount $cidata as vfat"
[ -f /cidata/meta-data ] || panic "no meta-data on $cidata: $(ls /cidata)"

# meta-data is flat `key: value` YAML.
meta() { sed -n "s/^$1: *//p" /cidata/meta-data | head -n 1; }
instance_id=$(meta instance-id)
name=$(meta local-hostname)
[ -n "$name" ] && hostname "$name"
say "instance-id $instance_id"
say "hostname $(hostname)"

# network-config: the netplan v2 subset the engine writes, flattened to one
# `mac address-or-dhcp gateway` line per ethernets entry.
if [ -f /cidata/network-config ]; then
  awk '
    function flush() { if (mac != "") print mac, (dhcp ? "dhcp" : (addr == "" ? "none" : addr)), (gw == "" ? "-" : gw) }
    /^  [^ ].*:$/ { flush(); mac = ""; addr = ""; gw = ""; dhcp = 0; want = 0; next }
    /^      macaddress:/ { mac = $2; gsub(/"/, "", mac); next }
    /^    addresses:/ { want = 1; next }
    /^      - / && want { if (addr == "") addr = $2; next }
    /^    [^ ]/ { want = 0 }
    /^    dhcp4: *true/ { dhcp = 1 }
    /^        via:/ { gw = $2 }
    END { flush() }
  ' /cidata/network-config >/run-nics
  while read -r mac addr gw; do
    mac=$(echo "$mac" | tr A-F a-f)
    nic=
    for dev in /sys/class/net/*; do
      [ "$(cat "$dev/address")" = "$mac" ] && nic=${dev##*/}
    done
    if [ -z "$nic" ]; then
      say "nic $mac absent"
      continue
    fi
    ip link set "$nic" up
    case "$addr" in
      dhcp) udhcpc -i "$nic" -n -q -t 5 -s /etc/udhcpc.script >/dev/null 2>&1 || say "nic $mac dhcp failed" ;;
      none) ;;
      *)
        ip addr add "$addr" dev "$nic" || say "nic $mac cannot add $addr"
        [ "$gw" = - ] || ip route add default via "$gw" dev "$nic" 2>/dev/null || true
        ;;
    esac
    for applied in $(ip -4 -o addr show dev "$nic" | awk '{print $4}'); do
      say "nic $nic mac $mac address $applied"
    done
  done </run-nics
else
  say "no network-config"
fi

echo "COCOON-CLOUD-GUEST READY"
umount /cidata
# A guest named *-waits stays up until the ACPI power button (a VMM's
# graceful stop), then powers off; the others power off at once.
case "$(hostname)" in
  *-waits)
    button=
    for dev in /sys/class/input/event*; do
      [ "$(cat "$dev/device/name" 2>/dev/null)" = "Power Button" ] && button=/dev/input/${dev##*/}
    done
    [ -n "$button" ] || panic "no ACPI power button among: $(cat /sys/class/input/*/name 2>/dev/null)"
    say "waiting for the power button on $button"
    dd if="$button" of=/dev/null bs=24 count=1 2>/dev/null
    say "power button pressed"
    ;;
esac
halt
