/**
 * Why a token was refused: one kind per verdict of the conformance rules
 * (clients/conformance/README.md), shared by every keyrelay SDK.
 */
export type VerifyErrorKind =
  | 'malformed'
  | 'no_kid'
  | 'revoked'
  | 'unknown_kid'
  | 'algorithm_not_permitted'
  | 'signature'
  | 'expired'
  | 'not_yet_valid'
  | 'issuer'
  | 'audience'
  | 'claims';

/** Every refusal kind, in the order the rules apply. */
export const VERIFY_ERROR_KINDS: readonly VerifyErrorKind[] = [
  'malformed',
  'no_kid',
  'revoked',
  'unknown_kid',
  'algorithm_not_permitted',
  'signature',
  'expired',
  'not_yet_valid',
  'issuer',
  'audience',
  'claims',
];

/** A refused token. `kind` is the verdict; `message` says exactly what was wrong. */
export class VerifyError extends Error {
  override readonly name = 'VerifyError';
  readonly kind: VerifyErrorKind;

  constructor(kind: VerifyErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

/** Whether `error` is a {@link VerifyError}, optionally of one kind. */
export function isVerifyError(error: unknown, kind?: VerifyErrorKind): error is VerifyError {
  return error instanceof VerifyError && (kind === undefined || error.kind === kind);
}

/** Why {@link Verifier.connect} could not start a verifier. */
export class ConnectError extends Error {
  override readonly name = 'ConnectError';
  /** The gRPC status code of the last failed attempt, when there was one. */
  readonly code: number | undefined;

  constructor(message: string, code?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
