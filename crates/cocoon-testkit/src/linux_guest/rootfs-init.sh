#!/bin/sh
# /sbin/init of the Linux test guest: reports what the contract promises the
# guest sees, writes a file that must land on the COW disk, and powers off.
export PATH=/bin
echo "COCOON-LINUX-GUEST READY"
echo "cmdline=$(cat /proc/cmdline)"
if [ -e /etc/doomed ]; then echo "doomed=present"; else echo "doomed=absent"; fi
echo "top-layer=$(cat /etc/layer)"
echo "added-by-upper=$(cat /etc/added-by-upper)"
echo "written by the guest" >/root/written-by-guest
sync
# Freezing checkpoints the ext4 journal, so the host reads the file without
# replaying it (debugfs does not replay journals).
fsfreeze --freeze /run/cocoon/cow && echo "cow=frozen"
echo "COCOON-LINUX-GUEST DONE"
poweroff -f
