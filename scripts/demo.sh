#!/usr/bin/env bash
# The main job, for now (storage engine): make a scoutfs volume on two sparse files, print a
# summary of its metadata, and check it with fsck. Later steps grow this into mounting the
# volume and the cluster demo. Everything it creates lives in one temp dir, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/var/tmp}/scoutfs-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
meta="$work/meta.img"
data="$work/data.img"
# sparse files: a 64 GiB metadata device and a 256 GiB data device cost no disk space
truncate -s 64G "$meta"
truncate -s 256G "$data"
scoutfs=bin/scoutfs

step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$scoutfs" mkfs -Q 0,127.0.0.1,19700 "$meta" "$data"
printf '\n$ %s print -S %s > print.txt; head -40 print.txt\n' "$scoutfs" "$meta"
"$scoutfs" print -S "$meta" > "$work/print.txt"
head -40 "$work/print.txt"
echo "... ($(wc -l < "$work/print.txt") lines in all)"
step "$scoutfs" fsck "$meta" "$data"
printf '\n$ %s mkfs -Q 0,127.0.0.1,19700 %s %s   # again, without -f\n' "$scoutfs" "$meta" "$data"
if "$scoutfs" mkfs -Q 0,127.0.0.1,19700 "$meta" "$data"; then
  echo "demo: mkfs over an existing volume should have been refused" >&2
  exit 1
fi
echo "(refused as expected; the volume is untouched:)"
step "$scoutfs" fsck "$meta" "$data"
echo
echo "du of the sparse devices: $(du -sh "$meta" | cut -f1) metadata, $(du -sh "$data" | cut -f1) data"
