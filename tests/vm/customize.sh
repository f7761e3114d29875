#!/bin/sh
# mmdebstrap --customize-hook for the VM tier's guest: $1 is the new root file system.
# A stock Debian 12 with two lingering users, booted straight into the test entry point.
set -eu
root=$1

# the Debian kernel mounts its root through modules: put them in the initrd
printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >/dev/null

echo babysit-vm > "$root/etc/hostname"
echo "127.0.1.1 babysit-vm" >> "$root/etc/hosts"
mkdir -p "$root/var/log/journal"  # persistent, so `journalctl --user` splits per user (Debian's default)

# tester: the user the tests run as, with the stock delegation (Debian's user@.service: cpu memory pids)
# plain: a second user whose user manager gets no memory or cpu controller, to see the delegation warning
chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash tester
chroot "$root" useradd --create-home --uid 1001 --shell /bin/bash plain
mkdir -p "$root/var/lib/systemd/linger"
touch "$root/var/lib/systemd/linger/tester" "$root/var/lib/systemd/linger/plain"
# (Delegate=no would not do: on cgroup v2 a user manager without a delegated cgroup does not start)
mkdir -p "$root/etc/systemd/system/user-1001.slice.d"
printf '[Slice]\nDisableControllers=memory cpu\n' > "$root/etc/systemd/system/user-1001.slice.d/no-controllers.conf"
# tests restart tester's user manager and act as plain through sudo, as an administrator would
echo 'tester ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/tester"
chmod 0440 "$root/etc/sudoers.d/tester"

# the entry point: mount the share, run the tree's guest script for this boot, power off
cat > "$root/usr/local/sbin/babysit-vm-entry" <<'ENTRY'
#!/bin/sh
mkdir -p /mnt/share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt/share
bash /mnt/share/tree/tests/vm/guest.sh > /mnt/share/guest-$(cat /mnt/share/phase).log 2>&1
echo $? > /mnt/share/status-$(cat /mnt/share/phase)
journalctl -b --no-pager -o short-monotonic > /mnt/share/journal-$(cat /mnt/share/phase).txt
sync
systemctl --no-block poweroff
ENTRY
chmod 0755 "$root/usr/local/sbin/babysit-vm-entry"
cat > "$root/etc/systemd/system/babysit-vm.service" <<'UNIT'
[Unit]
Description=babysit VM tier
[Service]
Type=simple
ExecStart=/usr/local/sbin/babysit-vm-entry
[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable babysit-vm.service >/dev/null 2>&1
# a quiet boot: nothing else runs beside the tests
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
            dpkg-db-backup.timer systemd-timesyncd.service serial-getty@ttyS0.service; do
  chroot "$root" systemctl mask "$unit" >/dev/null 2>&1
done
