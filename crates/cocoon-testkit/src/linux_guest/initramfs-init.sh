#!/bin/sh
# /init of the Linux test guest's initramfs: the guest contract's initramfs
# steps (reference/guest-contract.md) in busybox sh, for both disk naming
# schemes: virtio serials (Cloud Hypervisor) and /dev/vdX paths (Firecracker),
# and static networking from every `ip=` argument (the kernel's own ip=
# autoconfiguration is not built into Debian's cloud kernel, and would run
# before virtio_net is loaded anyway).
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /run moves into the new root, so the layer and COW mounts stay visible there.
mount -t tmpfs -o mode=0755 tmpfs /run

layers= cow= timeout=10 console= hostname= ips=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ip=*) ips="$ips ${arg#ip=}" ;;
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

# Prints the prefix length of a dotted IPv4 netmask; fails if it is not one.
prefix_of() {
  bits=0 rest=
  old_ifs=$IFS; IFS=.; set -- $1; IFS=$old_ifs
  [ $# -eq 4 ] || return 1
  for octet in "$@"; do
    # After a partial octet, only zeros.
    [ -z "$rest" ] || [ "$octet" = 0 ] || return 1
    case "$octet" in
      255) bits=$((bits + 8)) ;;
      254) bits=$((bits + 7)) rest=0 ;;
      252) bits=$((bits + 6)) rest=0 ;;
      248) bits=$((bits + 5)) rest=0 ;;
      240) bits=$((bits + 4)) rest=0 ;;
      224) bits=$((bits + 3)) rest=0 ;;
      192) bits=$((bits + 2)) rest=0 ;;
      128) bits=$((bits + 1)) rest=0 ;;
      0) rest=0 ;;
      *) return 1 ;;
    esac
  done
  echo "$bits"
}

# Step 1 of the contract: configures one NIC from an ip= value,
# <client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]].
# The engine writes static addresses only (autoconf off); a DHCP network
# gets no ip= at all. $2 is the argument's position, the default route's metric.
configure_ip() {
  case "$1" in off|none) return ;; esac
  metric=$2
  old_ifs=$IFS; IFS=:; set -- $1; IFS=$old_ifs
  client=$1 gw=$3 mask=$4 host=$5 dev=$6 autoconf=$7 dns0=$8 dns1=$9
  case "$autoconf" in off|none|"") ;; *) panic "ip=: autoconf $autoconf is not supported by this test image" ;; esac
  [ -n "$client" ] || panic "ip=: no client address"
  [ -n "$dev" ] || panic "ip=: no device for $client"
  prefix=$(prefix_of "${mask:-255.255.255.255}") || panic "ip=: bad netmask $mask"
  wait_for -e "/sys/class/net/$dev" || panic "no network device $dev after ${timeout}s"
  ip link set "$dev" up || panic "cannot bring up $dev"
  ip addr add "$client/$prefix" dev "$dev" || panic "cannot add $client/$prefix to $dev"
  if [ -n "$gw" ] && [ "$gw" != 0.0.0.0 ]; then
    ip route add default via "$gw" dev "$dev" metric "$metric" \
      || panic "cannot route via $gw on $dev"
  fi
  [ -z "$host" ] || hostname "$host"
  for server in $dns0 $dns1; do
    [ "$server" != 0.0.0.0 ] || continue
    grep -qx "nameserver $server" /run/cocoon/resolv.conf 2>/dev/null \
      || echo "nameserver $server" >>/run/cocoon/resolv.conf
  done
  echo "cocoon-network: $dev $client/$prefix via ${gw:-none}"
}

mkdir -p /run/cocoon
if [ -n "$ips" ]; then
  ip link set lo up || panic "cannot bring up lo"
  n=0
  for value in $ips; do
    configure_ip "$value" "$n"
    n=$((n + 1))
  done
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
[ ! -f /run/cocoon/resolv.conf ] || cp /run/cocoon/resolv.conf /newroot/etc/resolv.conf \
  || panic "cannot write /etc/resolv.conf"

for fs in /dev /proc /sys /run; do
  mount --move "$fs" "/newroot$fs" || panic "cannot move $fs into the new root"
done
exec switch_root /newroot /sbin/init
