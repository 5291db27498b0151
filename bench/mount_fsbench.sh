#!/usr/bin/env bash
# bench/mount_fsbench.sh - the shared fsbench.sh against a mounted scoutfs volume, an ext4 loop
# image and tmpfs, in one run, so that figures are compared as ratios measured side by side
# (issue 4 point 9; the machines are shared: absolute numbers move with other load).
#
# usage: bench/mount_fsbench.sh [options]
#   -n N        files for the metadata groups (default 20000)
#   -g LIST     fsbench groups (default meta,small,tree,fsync,seq)
#   -r RUNS     repetitions of every target; the table shows medians (default 3)
#   -s MIB      sequential write/read size (default 1024)
#   -t LIST     targets, in run order (default "scoutfs ext4 tmpfs")
#   -p PORT     quorum slot port of the scoutfs volume (default 31000 + pid % 1000)
#   -w DIR      work directory for images and mount points (default /var/tmp/mount-fsbench.PID)
#   -o DIR      where raw FSBENCH lines, the table and the machine conditions go
#               (default $WORKDIR/results, copied to ./mount-fsbench-results.PID at the end)
#   -P          pin the scoutfs daemon to CPU 1 and fsbench to CPU 0 (software cost, not the
#               realistic figure)
# Needs root (mounts, drop_caches), gcc, mkfs.ext4; bin/scoutfs built (npm run build).
# Every mount is unmounted and every image removed on exit, also on failure or ^C; the only
# process killed is the scoutfs daemon this script started, by its pid, if umount left it.
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSBENCH=${FSBENCH:-$REPO/../shared/bench/fsbench.sh}
TABLE=${FSBENCH_TABLE:-$(dirname "$FSBENCH")/fsbench-table.sh}
SCOUTFS="node $REPO/bin/scoutfs"
N=20000; GROUPS_=meta,small,tree,fsync,seq; RUNS=3; SEQMB=1024; TARGETS="scoutfs ext4 tmpfs"
PORT=$((31000 + $$ % 1000)); WORK=/var/tmp/mount-fsbench.$$; OUT=""; PIN=0
while getopts "n:g:r:s:t:p:w:o:Ph" o; do
  case $o in
    n) N=$OPTARG;; g) GROUPS_=$OPTARG;; r) RUNS=$OPTARG;; s) SEQMB=$OPTARG;; t) TARGETS=$OPTARG;;
    p) PORT=$OPTARG;; w) WORK=$OPTARG;; o) OUT=$OPTARG;; P) PIN=1;;
    *) sed -n '2,22p' "$0"; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "mount_fsbench: needs root" >&2; exit 2; }
[ -x "$FSBENCH" ] || [ -f "$FSBENCH" ] || { echo "mount_fsbench: no $FSBENCH" >&2; exit 2; }
[ -f "$REPO/dist/src/cli/main.js" ] || { echo "mount_fsbench: build first (npm run build)" >&2; exit 2; }

mkdir -p "$WORK" || exit 2
[ -n "$OUT" ] || OUT=$WORK/results
mkdir -p "$OUT"
RAW=$OUT/fsbench.txt
: > "$RAW"
MOUNTED=()
DAEMON=""

cleanup() {
  local m i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    m=${MOUNTED[$i]}
    if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; fi
  done
  if [ -n "$DAEMON" ]; then
    for _ in $(seq 1 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DAEMON" 2>/dev/null && echo "mount_fsbench: killed daemon $DAEMON" >&2
  fi
  if [ "$OUT" = "$WORK/results" ] && [ -d "$OUT" ]; then
    cp -r "$OUT" "./mount-fsbench-results.$$" 2>/dev/null &&
      echo "mount_fsbench: results in ./mount-fsbench-results.$$" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

conditions() { # what else the machine was doing
  echo "date=$(date -Is) kernel=$(uname -r) cpus=$(nproc) loadavg=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
  [ -r /proc/pressure/cpu ] && echo "cpu_pressure=\"$(head -1 /proc/pressure/cpu)\""
  [ -r /proc/pressure/io ] && echo "io_pressure=\"$(head -1 /proc/pressure/io)\""
  echo "node=$(node --version) git=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo +dirty)"
}

setup_scoutfs() {
  local d=$WORK/scoutfs
  mkdir -p "$d/mnt"
  truncate -s 4G "$d/meta" && truncate -s 16G "$d/data" || return 1
  $SCOUTFS mkfs -A -f -Q "0,127.0.0.1,$PORT" "$d/meta" "$d/data" > "$d/mkfs.log" 2>&1 ||
    { cat "$d/mkfs.log" >&2; return 1; }
  $SCOUTFS mount -o "metadev_path=$d/meta,quorum_slot_nr=0" "$d/data" "$d/mnt" || return 1
  MOUNTED+=("$d/mnt")
  DAEMON=$(pgrep -f "scoutfs-daemon $d/data $d/mnt" | head -1)
  [ -n "$DAEMON" ] || { echo "mount_fsbench: no daemon for $d/mnt" >&2; return 1; }
  if [ "$PIN" = 1 ]; then
    for t in /proc/"$DAEMON"/task/*; do taskset -pc 1 "${t##*/}" >/dev/null; done
  fi
  MNT=$d/mnt
}

setup_ext4() {
  local d=$WORK/ext4
  mkdir -p "$d/mnt"
  truncate -s 16G "$d/img" && mkfs.ext4 -q -F "$d/img" && mount -o loop "$d/img" "$d/mnt" || return 1
  MOUNTED+=("$d/mnt")
  MNT=$d/mnt
}

setup_tmpfs() {
  local d=$WORK/tmpfs
  mkdir -p "$d/mnt"
  mount -t tmpfs -o size=$((SEQMB * 2 + 1024))m tmpfs "$d/mnt" || return 1
  MOUNTED+=("$d/mnt")
  MNT=$d/mnt
}

conditions | tee "$OUT/conditions.txt"
declare -A WHERE
for t in $TARGETS; do
  MNT=""
  "setup_$t" || { echo "mount_fsbench: cannot set up $t" >&2; exit 1; }
  WHERE[$t]=$MNT
done

RUNNER=()
[ "$PIN" = 1 ] && RUNNER=(taskset -c 0)
for r in $(seq 1 "$RUNS"); do
  for t in $TARGETS; do
    dir=${WHERE[$t]}/run$r
    mkdir -p "$dir"
    echo "mount_fsbench: run $r/$RUNS on $t ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
    before=""
    [ "$t" = scoutfs ] && before=$(awk '{print $14 + $15}' "/proc/$DAEMON/stat")
    "${RUNNER[@]}" bash "$FSBENCH" -l "$t" -n "$N" -g "$GROUPS_" -s "$SEQMB" -o "$RAW" "$dir" \
      > "$OUT/run$r.$t.log" 2>&1 || echo "mount_fsbench: fsbench on $t failed (see run$r.$t.log)" >&2
    if [ "$t" = scoutfs ]; then
      after=$(awk '{print $14 + $15}' "/proc/$DAEMON/stat")
      awk -v a="$before" -v b="$after" -v hz="$(getconf CLK_TCK)" -v t="$t" -v r="$r" \
        'BEGIN { printf "FSBENCH label=%s metric=daemon_cpu value=%.2f unit=s run=%s\n", t, (b - a) / hz, r }' >> "$RAW"
      grep -E '^(VmRSS|VmHWM)' "/proc/$DAEMON/status" | tr -s ' \t' ' ' | sed "s/^/run=$r /" >> "$OUT/daemon_rss.txt"
    fi
    rm -rf "$dir"
  done
done
conditions > "$OUT/conditions_after.txt"

bash "$TABLE" -r -l "$TARGETS" "$RAW" | tee "$OUT/table.md"
echo
cat "$OUT/conditions_after.txt"
[ -s "$OUT/daemon_rss.txt" ] && { echo "scoutfs daemon memory:"; cat "$OUT/daemon_rss.txt"; }
exit 0
