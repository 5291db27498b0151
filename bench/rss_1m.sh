#!/usr/bin/env bash
# bench/rss_1m.sh - the mount daemon's memory while 1,000,000 files are created (issue 4
# point 9: its caches have byte bounds, so its RSS must level off, not grow with the files).
#
# usage: bench/rss_1m.sh [-n FILES] [-D FILES_PER_DIR] [-p PORT] [-w WORKDIR]
#   -n  files to create (default 1000000)
#   -D  files per directory (default 10000: 100 directories for a million)
#   -p  quorum slot port (default 32000 + pid % 1000)
#   -w  work directory for the volume's sparse files (default /var/tmp/rss-1m.PID)
# Makes a volume (4 GiB metadata, 16 GiB data, sparse), mounts it with bin/scoutfs, creates
# the files with fsbench's fsops helper (open(O_CREAT)+close) and prints one line per
# directory filled: files so far, create rate, the daemon's VmRSS and VmHWM
# (/proc/PID/status), then the same after sync and after dropping the kernel's caches (the
# kernel forgets its inodes and dentries; the daemon's references go with them).
# Unmounts and removes everything on exit, also on failure or ^C.
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSOPS_SRC=${FSOPS_SRC:-$REPO/../shared/bench/fsops.c}
SCOUTFS="node $REPO/bin/scoutfs"
N=1000000; PER=10000; PORT=$((32000 + $$ % 1000)); WORK=/var/tmp/rss-1m.$$
while getopts "n:D:p:w:h" o; do
  case $o in
    n) N=$OPTARG;; D) PER=$OPTARG;; p) PORT=$OPTARG;; w) WORK=$OPTARG;;
    *) sed -n '2,17p' "$0"; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "rss_1m: needs root" >&2; exit 2; }
mkdir -p "$WORK/mnt" || exit 2
MNT=$WORK/mnt
DAEMON=""
cleanup() {
  if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; fi
  if [ -n "$DAEMON" ]; then
    for _ in $(seq 1 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DAEMON" 2>/dev/null && echo "rss_1m: killed daemon $DAEMON" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FSOPS=$WORK/fsops
cc -O2 -o "$FSOPS" "$FSOPS_SRC" || exit 2
truncate -s 4G "$WORK/meta" && truncate -s 16G "$WORK/data" || exit 1
$SCOUTFS mkfs -A -f -Q "0,127.0.0.1,$PORT" "$WORK/meta" "$WORK/data" > /dev/null || exit 1
$SCOUTFS mount -o "metadev_path=$WORK/meta,quorum_slot_nr=0" "$WORK/data" "$MNT" || exit 1
DAEMON=$(pgrep -f "scoutfs-daemon $WORK/data $MNT" | head -1)
[ -n "$DAEMON" ] || { echo "rss_1m: daemon not found" >&2; exit 1; }

mem() { # "VmRSS_kB VmHWM_kB"
  awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {print r, h}' "/proc/$DAEMON/status"
}
report() { # label files
  read -r rss hwm <<<"$(mem)"
  echo "RSS1M label=$1 files=$2 vmrss_mib=$((rss / 1024)) vmhwm_mib=$((hwm / 1024)) $3"
}

echo "RSS1M info n=$N per_dir=$PER kernel=$(uname -r) loadavg=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
report start 0 ""
done_n=0
t0=$(date +%s.%N)
for ((d = 0; done_n < N; d++)); do
  mkdir "$MNT/d$d" || exit 1
  k=$((N - done_n < PER ? N - done_n : PER))
  r=$("$FSOPS" create "$MNT/d$d" f "$k" 0) || { echo "rss_1m: create failed: $r" >&2; exit 1; }
  done_n=$((done_n + $(sed -n 's/.*ops=\([0-9]*\).*/\1/p' <<<"$r")))
  rate=$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' <<<"$r")
  report created "$done_n" "dir_rate=$rate"
done
t1=$(date +%s.%N)
report created_all "$done_n" "avg_rate=$(awk -v a="$t0" -v b="$t1" -v n="$done_n" 'BEGIN {printf "%.0f", n / (b - a)}')"
sync
report after_sync "$done_n" ""
echo 3 > /proc/sys/vm/drop_caches
sleep 5
report after_drop_caches "$done_n" ""
# a full walk: every inode looked up again (kernel references come back, caches refill)
r=$(find "$MNT" -type f | wc -l)
report after_find "$done_n" "found=$r"
exit 0
