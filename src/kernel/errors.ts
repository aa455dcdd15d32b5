/** The kernel engine's errors, with stable codes. */

export type KernelNatErrorCode =
  | 'NO_BINARY'
  | 'NO_KERNEL_NAT'
  | 'PERMISSION'
  | 'CONFLICT'
  | 'LEFTOVER'
  | 'ALREADY_RUNNING'
  | 'APPLY_FAILED'
  | 'VERIFY_FAILED'
  | 'REMOVE_FAILED'
  /** A setting the kernel's NAT cannot express (a pool that is not one range, static SNAT entries). */
  | 'UNSUPPORTED';

export class KernelNatError extends Error {
  constructor(
    readonly code: KernelNatErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'KernelNatError';
  }
}

export const NOTHING_CHANGED = 'Nothing was changed.';
