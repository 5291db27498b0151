/*
 * Entry of /sbin/mount.scoutfs (a script written by `scoutfs install-mount-helper` that runs
 * this file with the node that installed it): mount(8) calls it for `mount -t scoutfs`.
 */
import { helperMain } from "./mount_helper.js";

process.exitCode = await helperMain(process.argv.slice(2));
