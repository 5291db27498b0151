#!/usr/bin/env bash
# The main job: make a scoutfs volume on two sparse files, mount it with `mount -t scoutfs`
# (through the /sbin/mount.scoutfs helper this installs), run upstream's quick-start
# walk-through (the meta_seq index before and after touching files and syncing), use it with
# ordinary tools and the scoutfs CLI, unmount, and check the volume with fsck. Everything it
# creates lives in one temp dir, removed on exit; the mount is always unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/var/tmp}/scoutfs-demo.XXXXXX")
mnt="$work/mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  rm -rf "$work"
}
trap cleanup EXIT
meta="$work/meta.img"
data="$work/data.img"
# sparse files: a 64 GiB metadata device and a 256 GiB data device cost no disk space
truncate -s 64G "$meta"
truncate -s 256G "$data"
mkdir "$mnt"
scoutfs=bin/scoutfs
port=$((20000 + RANDOM % 20000))

step() { printf '\n$ %s\n' "$*"; "$@"; }
show() { printf '\n$ %s\n' "$*"; eval "$@"; }

step "$scoutfs" mkfs -Q "0,127.0.0.1,$port" "$meta" "$data"
step "$scoutfs" install-mount-helper
step mount -t scoutfs -o "metadev_path=$meta,quorum_slot_nr=0" "$data" "$mnt"
show "grep ' $mnt ' /proc/mounts"

echo
echo "# upstream's quick start: the meta_seq index lists the inodes each transaction changed"
echo "# (a FUSE filesystem does not receive sync(2)'s syncfs: 'sync FILE' fsyncs, which commits)"
step "$scoutfs" walk-inodes -p "$mnt" -- meta_seq 0 -1
show "touch $mnt/one; sync $mnt/one"
step "$scoutfs" walk-inodes -p "$mnt" -- meta_seq 0 -1
show "touch $mnt/two; sync $mnt/two"
step "$scoutfs" walk-inodes -p "$mnt" -- meta_seq 0 -1
show "touch $mnt/one; sync $mnt/one"
step "$scoutfs" walk-inodes -p "$mnt" -- meta_seq 0 -1

echo
echo "# ordinary tools"
show "mkdir -p $mnt/dir/sub && cp -r src/core $mnt/dir/sub/ && ls $mnt/dir/sub/core | head -5"
show "dd if=/dev/urandom of=$mnt/dir/big bs=1M count=64 status=none && cmp <(cat $mnt/dir/big) $mnt/dir/big && ls -l $mnt/dir/big"
show "ln $mnt/dir/big $mnt/dir/big.link; ln -s big $mnt/dir/big.sym; ls -li $mnt/dir | head"
show "python3 -c \"import os; os.setxattr('$mnt/one', 'user.demo', b'hello'); print(os.listxattr('$mnt/one'), os.getxattr('$mnt/one', 'user.demo'))\""
show "df -h $mnt"
step "$scoutfs" stat "$mnt/dir/big"
step "$scoutfs" statfs -p "$mnt"
step "$scoutfs" df -p "$mnt"
show "$scoutfs ino-path \$(stat -c %i $mnt/dir/big) -p $mnt"
step umount "$mnt"
step "$scoutfs" fsck "$meta" "$data"
echo
echo "du of the sparse devices: $(du -sh "$meta" | cut -f1) metadata, $(du -sh "$data" | cut -f1) data"
