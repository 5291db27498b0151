/*
 * Typed operating errors.
 *
 * Every error an operation may legitimately return (bad input, missing item, corruption found
 * on disk, device failure) is an FsError carrying a Linux errno number and its symbolic code,
 * shaped like Node's system errors. Anything thrown that is not an FsError is a bug: the FUSE
 * layer and the CLI report it as EIO plus a logged stack. Callers test `err.code`, never text.
 */

/** Linux errno numbers used by scoutfs (x86_64 values). */
export const Errno = {
  EPERM: 1, ENOENT: 2, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, EAGAIN: 11, ENOMEM: 12,
  EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, EXDEV: 18, ENODEV: 19, ENOTDIR: 20,
  EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, EFBIG: 27, ENOSPC: 28,
  ESPIPE: 29, EROFS: 30, EMLINK: 31, ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38,
  ENOTEMPTY: 39, ELOOP: 40, ENODATA: 61, ENOLINK: 67, EPROTO: 71, EOVERFLOW: 75,
  EBADMSG: 74, EOPNOTSUPP: 95, ECONNREFUSED: 111, ENOTCONN: 107, ETIMEDOUT: 110,
  ESTALE: 116, EDQUOT: 122, ECANCELED: 125, ENOBUFS: 105, EINPROGRESS: 115,
  EINTR: 4, EDEADLK: 35, ENOLCK: 37,
} as const;

export type ErrnoCode = keyof typeof Errno;

const byNumber = new Map<number, ErrnoCode>(
  Object.entries(Errno).map(([k, v]) => [v, k as ErrnoCode]),
);

/** Standard strerror() texts (glibc), for CLI output that must match upstream exactly. */
const strerrors: Partial<Record<ErrnoCode, string>> = {
  EPERM: "Operation not permitted", ENOENT: "No such file or directory",
  EIO: "Input/output error", ENXIO: "No such device or address",
  E2BIG: "Argument list too long", EBADF: "Bad file descriptor",
  EAGAIN: "Resource temporarily unavailable", ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied", EFAULT: "Bad address", EBUSY: "Device or resource busy",
  EEXIST: "File exists", EXDEV: "Invalid cross-device link", ENODEV: "No such device",
  ENOTDIR: "Not a directory", EISDIR: "Is a directory", EINVAL: "Invalid argument",
  ENFILE: "Too many open files in system", EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device", EFBIG: "File too large",
  ENOSPC: "No space left on device", ESPIPE: "Illegal seek", EROFS: "Read-only file system",
  EMLINK: "Too many links", ERANGE: "Numerical result out of range",
  ENAMETOOLONG: "File name too long", ENOSYS: "Function not implemented",
  ENOTEMPTY: "Directory not empty", ELOOP: "Too many levels of symbolic links",
  ENODATA: "No data available", ENOLINK: "Link has been severed", EPROTO: "Protocol error",
  EOVERFLOW: "Value too large for defined data type", EBADMSG: "Bad message",
  EOPNOTSUPP: "Operation not supported", ECONNREFUSED: "Connection refused",
  ENOTCONN: "Transport endpoint is not connected", ETIMEDOUT: "Connection timed out",
  ESTALE: "Stale file handle", EDQUOT: "Disk quota exceeded",
  ECANCELED: "Operation canceled", ENOBUFS: "No buffer space available",
  EINPROGRESS: "Operation now in progress",
  EINTR: "Interrupted system call", EDEADLK: "Resource deadlock avoided",
  ENOLCK: "No locks available",
};

export function strerror(errno: number): string {
  const code = byNumber.get(errno);
  return (code && strerrors[code]) ?? `Unknown error ${errno}`;
}

export function errnoCode(errno: number): ErrnoCode | undefined {
  return byNumber.get(errno);
}

export class FsError extends Error {
  readonly errno: number;
  readonly code: ErrnoCode;
  readonly syscall: string | undefined;
  readonly path: string | undefined;

  constructor(code: ErrnoCode, message?: string, syscall?: string, path?: string) {
    super(`${code}: ${message ?? strerror(Errno[code])}` +
      (syscall ? `, ${syscall}` : "") + (path ? ` '${path}'` : ""));
    this.name = "FsError";
    this.code = code;
    this.errno = Errno[code];
    this.syscall = syscall;
    this.path = path;
  }
}

export function isFsError(e: unknown, code?: ErrnoCode): e is FsError {
  return e instanceof FsError && (code === undefined || e.code === code);
}

/** Converts a Node system error (err.code = 'ENOENT', ...) into an FsError, else EIO. */
export function fromNodeError(e: unknown, syscall?: string, path?: string): FsError {
  if (e instanceof FsError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && code in Errno) {
    return new FsError(code as ErrnoCode, undefined, syscall, path);
  }
  return new FsError("EIO", e instanceof Error ? e.message : String(e), syscall, path);
}
