#!/bin/sh
# /sbin/init of the Linux test guest: reports what the contract promises the
# guest sees, writes a file that must land on the COW disk, and powers off.
#
# Networking tests append test-only arguments to the engine's command line
# (the engine never writes them):
#   cocoon.test.ping=<ip>[,<ip>...]  ping each address, retrying for up to a
#       minute (a peer may still be booting), and report `ping:<ip>=ok` or
#       `ping:<ip>=failed`
#   cocoon.test.hold=<seconds>       stay up that long before the usual end,
#       so the host can reach the guest; the test kills qemu when it is done
# With either, the guest first reports its network (`inet=`, `route=`,
# `resolv=`, `hostname=` lines) and then "COCOON-LINUX-GUEST NET-UP".
#
# The interactive variant of the image (a layer adding /etc/cocoon-test-shell)
# is for tests that boot it through the engine, whose command line they cannot
# extend: after the reports it prints "COCOON-LINUX-GUEST SHELL" and runs a
# shell on the console instead of writing, freezing and powering off.
export PATH=/bin
echo "COCOON-LINUX-GUEST READY"
echo "cmdline=$(cat /proc/cmdline)"
if [ -e /etc/doomed ]; then echo "doomed=present"; else echo "doomed=absent"; fi
echo "top-layer=$(cat /etc/layer)"
echo "added-by-upper=$(cat /etc/added-by-upper)"

ping= hold=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cocoon.test.ping=*) ping=${arg#cocoon.test.ping=} ;;
    cocoon.test.hold=*) hold=${arg#cocoon.test.hold=} ;;
  esac
done
if [ -n "$ping$hold" ]; then
  ip -4 -o addr show | while read -r _ dev _ cidr _; do
    [ "$dev" = lo ] || echo "inet=$dev $cidr"
  done
  ip route show | while read -r line; do echo "route=$line"; done
  [ ! -f /etc/resolv.conf ] || while read -r line; do echo "resolv=$line"; done </etc/resolv.conf
  echo "hostname=$(cat /etc/hostname)"
  echo "COCOON-LINUX-GUEST NET-UP"
  for peer in $(echo "$ping" | tr , ' '); do
    result=failed
    for _ in $(seq 60); do
      if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then result=ok; break; fi
      # "Network unreachable" fails at once: do not burn the tries.
      sleep 0.5
    done
    echo "ping:$peer=$result"
  done
  [ -z "$hold" ] || sleep "$hold"
fi

if [ -e /etc/cocoon-test-shell ]; then
  echo "COCOON-LINUX-GUEST SHELL"
  sh
  poweroff -f
fi

echo "written by the guest" >/root/written-by-guest
sync
# Freezing checkpoints the ext4 journal, so the host reads the file without
# replaying it (debugfs does not replay journals).
fsfreeze --freeze /run/cocoon/cow && echo "cow=frozen"
echo "COCOON-LINUX-GUEST DONE"
poweroff -f
