/*
 * Test helper: exact accounting of a volume's data blocks, offline, from the metadata device.
 * The check itself lives in the core (src/core/fsck_data.ts), where fsck uses it too: every
 * data block free in exactly one allocator or mapped by exactly one current extent of the
 * forest (fs_root and the log trees, newest versions, deletions hiding older ones).
 */
export { type DataAccounting, dataAccounting } from "../../src/core/fsck_data.js";
