#!/bin/sh
# /init of the Linux test guest's initramfs: the guest contract's initramfs
# steps (reference/guest-contract.md) in busybox sh, for both disk naming
# schemes: virtio serials (Cloud Hypervisor) and /dev/vdX paths (Firecracker).
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /run moves into the new root, so the layer and COW mounts stay visible there.
mount -t tmpfs -o mode=0755 tmpfs /run

layers= cow= timeout=10 console= hostname=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cocoon.layers=*) layers=${arg#cocoon.layers=} ;;
    cocoon.cow=*) cow=${arg#cocoon.cow=} ;;
    cocoon.timeout=*) timeout=${arg#cocoon.timeout=} ;;
    cocoon.hostname=*) hostname=${arg#cocoon.hostname=} ;;
    # The last console= is the one /dev/console names.
    console=*) console=${arg#console=}; console=${console%%,*} ;;
  esac
done

# Halting beats a kernel panic here: the VMM exits and its caller sees why.
panic() {
  echo "cocoon-overlay: PANIC: $*"
  sync
  poweroff -f
  sleep 60
}

# The virtio drivers are modules in Debian's cloud kernel: without them there
# are no disks, and with console=hvc0 no console either.
for module in $(cat /etc/cocoon-modules); do
  insmod "/lib/modules/$module.ko" || panic "cannot load $module"
done

# Waits up to $timeout seconds for `test $1 $2` to hold.
wait_for() {
  tries=$((timeout * 10))
  while ! test "$1" "$2"; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
}

# The kernel could not open hvc0 at boot (virtio_console was not loaded yet):
# attach this shell, and through it the real init, to the console now.
if [ -n "$console" ]; then
  wait_for -c "/dev/$console" || panic "no console /dev/$console after ${timeout}s"
  exec </dev/"$console" >/dev/"$console" 2>&1
fi

# Prints the /dev path of a disk named by path or by virtio serial.
find_disk() {
  case "$1" in
    /dev/*) [ -b "$1" ] && echo "$1" ;;
    *)
      for serial in /sys/block/vd*/serial; do
        [ -f "$serial" ] && [ "$(cat "$serial")" = "$1" ] || continue
        disk=${serial%/serial}
        echo "/dev/${disk##*/}"
        return
      done
      ;;
  esac
}

# Waits up to $timeout seconds for a disk; prints its /dev path.
resolve() {
  tries=$((timeout * 10))
  until path=$(find_disk "$1") && [ -n "$path" ]; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
  echo "$path"
}

[ -n "$layers" ] || panic "no cocoon.layers= on the kernel command line"
[ -n "$cow" ] || panic "no cocoon.cow= on the kernel command line"

mkdir -p /run/cocoon/cow
lowerdir=
i=0
for layer in $(echo "$layers" | tr , ' '); do
  disk=$(resolve "$layer") || panic "layer disk $layer not found after ${timeout}s"
  echo "cocoon-overlay: layer $layer is $disk"
  mkdir -p "/run/cocoon/layer$i"
  mount -t erofs -o ro "$disk" "/run/cocoon/layer$i" || panic "cannot mount layer $layer ($disk) as erofs"
  # The command line lists the top layer first, as lowerdir wants it.
  lowerdir=${lowerdir:+$lowerdir:}/run/cocoon/layer$i
  i=$((i + 1))
done
disk=$(resolve "$cow") || panic "COW disk $cow not found after ${timeout}s"
echo "cocoon-overlay: cow $cow is $disk"
mount -t ext4 -o noatime "$disk" /run/cocoon/cow || panic "cannot mount COW $cow ($disk) as ext4"
mkdir -p /run/cocoon/cow/upper /run/cocoon/cow/work
mount -t overlay overlay \
  -o "lowerdir=$lowerdir,upperdir=/run/cocoon/cow/upper,workdir=/run/cocoon/cow/work" /newroot \
  || panic "cannot mount the overlay root"

# A fresh identity for the clone.
: >/newroot/etc/machine-id
[ -z "$hostname" ] || echo "$hostname" >/newroot/etc/hostname

for fs in /dev /proc /sys /run; do
  mount --move "$fs" "/newroot$fs" || panic "cannot move $fs into the new root"
done
exec switch_root /newroot /sbin/init
