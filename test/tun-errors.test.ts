import { describe, expect, it } from 'vitest';
import { isErrnoError, TunError, tunErrorFrom } from '../src/tun/errors.js';

// Shaped like what native/tun.cc throws.
function nativeError(errno: number, code: string, syscall: string, device?: string): Error {
  return Object.assign(new Error(`${syscall}: ${code}`), { errno, code, syscall, ...(device ? { device } : {}) });
}

describe('tunErrorFrom', () => {
  it.each([
    [1, 'EPERM', 'ioctl(TUNSETIFF)', 'TUN_PERMISSION', /CAP_NET_ADMIN/],
    [13, 'EACCES', 'open', 'TUN_PERMISSION', /opening \/dev\/net\/tun needs CAP_NET_ADMIN \(run as root\)/],
    [2, 'ENOENT', 'open', 'TUN_UNAVAILABLE', /no \/dev\/net\/tun: load the tun module \(modprobe tun\)/],
    [19, 'ENODEV', 'open', 'TUN_UNAVAILABLE', /modprobe tun/],
    [6, 'ENXIO', 'open', 'TUN_UNAVAILABLE', /modprobe tun/],
    [16, 'EBUSY', 'ioctl(TUNSETIFF)', 'TUN_BUSY', /already attached.*multiQueue/],
    [22, 'EINVAL', 'ioctl(TUNSETIFF)', 'TUN_INVALID', /not a valid interface name/],
    [22, 'EINVAL', 'ioctl(TUNSETOFFLOAD)', 'TUN_INVALID', /offload/],
    [22, 'EINVAL', 'ioctl(TUNSETVNETHDRSZ)', 'TUN_INVALID', /vnet header size/],
    [9, 'EBADF', 'read', 'TUN_IO', /is closed/],
    [5, 'EIO', 'write', 'TUN_IO', /is down: bring it up \(ip link set lab0 up\)/],
    [77, 'EBADFD', 'read', 'TUN_IO', /detached/],
    [105, 'ENOBUFS', 'write', 'TUN_IO', /write failed/],
  ] as const)('errno %i (%s) from %s → %s', (errno, code, syscall, expected, hint) => {
    const err = tunErrorFrom(nativeError(errno, code, syscall, 'lab0'));
    expect(err).toBeInstanceOf(TunError);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe(expected);
    expect(err.errno).toBe(errno);
    expect(err.errnoCode).toBe(code);
    expect(err.syscall).toBe(syscall);
    expect(err.device).toBe('lab0');
    expect(err.message).toMatch(hint);
    // The original text stays in the message and the original error in `cause`.
    expect(err.message).toContain(`${syscall}: ${code}`);
    expect(err.cause).toBeInstanceOf(Error);
  });

  it("accepts Node's negative errno convention and fills in a missing name", () => {
    const fromFs = tunErrorFrom(Object.assign(new Error('EACCES: permission denied'), { errno: -13, syscall: 'open' }));
    expect(fromFs.code).toBe('TUN_PERMISSION');
    expect(fromFs.errno).toBe(13);
    expect(fromFs.errnoCode).toBe('EACCES');
  });

  it('returns a TunError unchanged', () => {
    const e = new TunError('TUN_BUSY', 'busy');
    expect(tunErrorFrom(e)).toBe(e);
  });

  it('wraps errors without errno, and non-errors, as TUN_IO', () => {
    const plain = tunErrorFrom(new Error('boom'));
    expect(plain.code).toBe('TUN_IO');
    expect(plain.errno).toBeUndefined();
    expect(plain.message).toContain('boom');
    expect(tunErrorFrom('text').code).toBe('TUN_IO');
    expect(tunErrorFrom(undefined).message).toContain('undefined');
  });

  it('isErrnoError tells system-call failures from programming errors', () => {
    expect(isErrnoError(nativeError(9, 'EBADF', 'read'))).toBe(true);
    expect(isErrnoError(new RangeError('slotSize'))).toBe(false);
    expect(isErrnoError(null)).toBe(false);
  });
});
