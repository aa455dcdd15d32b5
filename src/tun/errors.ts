import { constants as osConstants } from 'node:os';

/**
 * Stable codes for what went wrong with a TUN device, so callers (the CLI, the data plane) can
 * react without parsing messages:
 * - TUN_PERMISSION: EPERM/EACCES — /dev/net/tun or TUNSETIFF needs root (CAP_NET_ADMIN).
 * - TUN_UNAVAILABLE: no /dev/net/tun, no tun driver, or the native addon is not built.
 * - TUN_BUSY: EBUSY — the interface is already attached to another (non-multi-queue) handle.
 * - TUN_INVALID: EINVAL — bad interface name, a non-TUN interface of that name, mismatched
 *   flags, or an offload/vnet-header value the kernel refused.
 * - TUN_IO: everything else (closed device, interface down or gone, unexpected errno).
 */
export type TunErrorCode = 'TUN_PERMISSION' | 'TUN_UNAVAILABLE' | 'TUN_BUSY' | 'TUN_INVALID' | 'TUN_IO';

export interface TunErrorDetails {
  /** Positive Linux errno, when the error came from a system call. */
  errno?: number;
  /** POSIX errno name ('EACCES'), when known. */
  errnoCode?: string;
  /** The failing call: 'open', 'ioctl(TUNSETIFF)', 'read', 'write', 'poll', ... */
  syscall?: string;
  /** Interface name involved, when known. */
  device?: string;
  cause?: unknown;
}

export class TunError extends Error {
  readonly code: TunErrorCode;
  readonly errno: number | undefined;
  readonly errnoCode: string | undefined;
  readonly syscall: string | undefined;
  readonly device: string | undefined;

  constructor(code: TunErrorCode, message: string, details: TunErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'TunError';
    this.code = code;
    this.errno = details.errno;
    this.errnoCode = details.errnoCode;
    this.syscall = details.syscall;
    this.device = details.device;
  }
}

const TUN_PATH = '/dev/net/tun';

// errno number → POSIX name, for errors that carry only the number.
const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name] as [number, string]),
);

function codeForErrno(name: string | undefined): TunErrorCode {
  switch (name) {
    case 'EPERM':
    case 'EACCES':
      return 'TUN_PERMISSION';
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
      return 'TUN_UNAVAILABLE';
    case 'EBUSY':
      return 'TUN_BUSY';
    case 'EINVAL':
      return 'TUN_INVALID';
    default:
      return 'TUN_IO';
  }
}

// The advice a user needs, chosen by which call failed; the raw errno text is appended after it.
function hintFor(name: string | undefined, syscall: string | undefined, device: string | undefined): string {
  const dev = device ? `TUN device '${device}'` : 'the TUN device';
  const opening = syscall === 'open';
  const creating = syscall === 'ioctl(TUNSETIFF)';
  switch (name) {
    case 'EACCES':
    case 'EPERM':
      if (opening) return `opening ${TUN_PATH} needs CAP_NET_ADMIN (run as root)`;
      if (creating) return `creating or attaching ${dev} needs CAP_NET_ADMIN (run as root)`;
      return `${dev}: operation not permitted (needs CAP_NET_ADMIN)`;
    case 'ENOENT':
      if (opening) return `no ${TUN_PATH}: load the tun module (modprobe tun)`;
      return `${dev}: not found`;
    case 'ENODEV':
    case 'ENXIO':
      if (opening) return `${TUN_PATH} exists but the tun driver is missing: load the tun module (modprobe tun)`;
      if (syscall === 'write' || syscall === 'read') return `${dev} is gone (its interface was deleted)`;
      return `${dev}: no such device`;
    case 'EBUSY':
      return (
        `${dev} is already attached to another file descriptor: close the other user, ` +
        'or open every queue with multiQueue'
      );
    case 'EINVAL':
      if (creating) {
        return (
          `cannot open ${dev}: the name is not a valid interface name (at most 15 characters, ` +
          'no "/" or spaces), belongs to a non-TUN interface, or the existing device was created ' +
          'with different multiQueue/vnetHdr flags'
        );
      }
      if (syscall === 'ioctl(TUNSETOFFLOAD)') return `${dev} refused the offload flags (unknown TUN_F_* bits)`;
      if (syscall === 'ioctl(TUNSETVNETHDRSZ)') return `${dev} refused the vnet header size (minimum 10)`;
      if (syscall === 'read') return `${dev}: read slot too small for the vnet header`;
      return `${dev}: invalid argument`;
    case 'EBADF':
      return `${dev} is closed`;
    case 'EBADFD':
      return `${dev} was detached from its interface (deleted or queue disabled)`;
    case 'EIO':
      if (syscall === 'write') return `${dev} is down: bring it up (ip link set ${device ?? '<name>'} up)`;
      return `${dev}: I/O error`;
    default:
      return syscall ? `${dev}: ${syscall} failed` : `${dev}: operation failed`;
  }
}

function stringProp(obj: object, key: string): string | undefined {
  const v: unknown = (obj as Record<string, unknown>)[key];
  return typeof v === 'string' ? v : undefined;
}

function numberProp(obj: object, key: string): number | undefined {
  const v: unknown = (obj as Record<string, unknown>)[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * Convert an error thrown by the native addon (or any errno-carrying Node error, whose errno is
 * negative) into a TunError. A TunError is returned unchanged; anything without an errno becomes
 * TUN_IO with the original as `cause`.
 */
export function tunErrorFrom(err: unknown): TunError {
  if (err instanceof TunError) return err;
  if (typeof err !== 'object' || err === null) {
    return new TunError('TUN_IO', `TUN operation failed: ${String(err)}`, { cause: err });
  }
  const rawErrno = numberProp(err, 'errno');
  const errno = rawErrno === undefined ? undefined : Math.abs(rawErrno);
  const rawCode = stringProp(err, 'code');
  const errnoCode =
    rawCode !== undefined && /^E[A-Z0-9]+$/.test(rawCode)
      ? rawCode
      : errno !== undefined
        ? errnoNames.get(errno)
        : undefined;
  const syscall = stringProp(err, 'syscall');
  const device = stringProp(err, 'device');
  const original = err instanceof Error ? err.message : String(err);

  if (errno === undefined && errnoCode === undefined) {
    return new TunError('TUN_IO', `TUN operation failed: ${original}`, { syscall, device, cause: err });
  }
  const code = codeForErrno(errnoCode);
  const message = `${hintFor(errnoCode, syscall, device)} — ${original}`;
  return new TunError(code, message, { errno, errnoCode, syscall, device, cause: err });
}

/** True when `err` carries an errno (system-call failure) rather than being a programming error. */
export function isErrnoError(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  return numberProp(err, 'errno') !== undefined;
}
