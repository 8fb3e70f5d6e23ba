/**
 * Checking one token by the rules every keyrelay SDK follows (clients/conformance/README.md), in
 * their order: shape, key, algorithm (from the key), signature (jose), time, issuer, audience.
 */

import { compactVerify, errors as joseErrors } from 'jose';

import { type Algorithm, isAlgorithm } from './algorithms.js';
import { VerifyError } from './errors.js';
import { type HeldKey, KeySet, isObject } from './keys.js';

/** The claims of an accepted token. */
export type Claims = Record<string, unknown> & {
  iss?: string;
  sub?: string;
  aud?: string | string[];
  exp?: number;
  nbf?: number;
  iat?: number;
  jti?: string;
};

/** What a token must satisfy beyond a valid signature and time window. */
export interface Expectations {
  /** Accepted `iss` values (exact match). Unset or empty: `iss` is not checked. */
  issuer?: string | readonly string[] | undefined;
  /** Accepted `aud` values; the token's `aud` must contain one. Unset or empty: not checked. */
  audience?: string | readonly string[] | undefined;
  /** Clock skew allowed on `exp` and `nbf`, in seconds. Default 60. */
  leeway?: number | undefined;
  /** The current time (tests); default `Date.now()`. */
  currentDate?: Date | undefined;
}

/** The default leeway on `exp` and `nbf`, in seconds. */
export const DEFAULT_LEEWAY_SECONDS = 60;

/** A token whose shape passed rule 1 and that names a kid. */
export interface ParsedToken {
  readonly token: string;
  readonly header: Readonly<Record<string, unknown>>;
  readonly payload: Readonly<Record<string, unknown>>;
  /** The token's `alg` as written. */
  readonly alg: string;
  readonly kid: string;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

function malformed(message: string): VerifyError {
  return new VerifyError('malformed', `malformed token: ${message}`);
}

function isBase64url(part: string): boolean {
  return BASE64URL.test(part) && part.length % 4 !== 1;
}

function jsonObject(part: string, what: string): Record<string, unknown> {
  if (!isBase64url(part)) {
    throw malformed(`the ${what} is not base64url`);
  }
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(Buffer.from(part, 'base64url')));
  } catch {
    throw malformed(`the ${what} is not JSON`);
  }
  if (!isObject(value)) {
    throw malformed(`the ${what} is not a JSON object`);
  }
  return value;
}

/**
 * Rules 1 and 2a: three base64url parts, a JSON object header with a string `alg` other than
 * `none`, no `crit`, a string `kid` (`no_kid` when absent), a JSON object payload.
 */
export function parseToken(token: unknown): ParsedToken {
  if (typeof token !== 'string') {
    throw malformed('not a string');
  }
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw malformed('a JWT has three dot-separated parts');
  }
  const [encodedHeader, encodedPayload, signature] = parts as [string, string, string];
  const header = jsonObject(encodedHeader, 'header');
  if ('crit' in header) {
    throw malformed('the header has crit extensions, which keyrelay SDKs do not support');
  }
  if (typeof header.alg !== 'string') {
    throw malformed('the header has no string alg');
  }
  if (header.alg.toLowerCase() === 'none') {
    throw malformed('alg none is never accepted');
  }
  if (header.kid !== undefined && typeof header.kid !== 'string') {
    throw malformed("the header's kid is not a string");
  }
  const payload = jsonObject(encodedPayload, 'payload');
  if (!isBase64url(signature)) {
    throw malformed('the signature is not base64url');
  }
  if (header.kid === undefined) {
    throw new VerifyError('no_kid', 'the token header has no kid');
  }
  return { token, header, payload, alg: header.alg, kid: header.kid };
}

function list(value: string | readonly string[] | undefined): readonly string[] {
  return value === undefined ? [] : typeof value === 'string' ? [value] : value;
}

/** Rules 3 to 7 for a token whose key was found: algorithm, signature, time, iss, aud. */
export async function verifyParsed(parsed: ParsedToken, key: HeldKey, expected: Expectations = {}): Promise<Claims> {
  const leeway = expected.leeway ?? DEFAULT_LEEWAY_SECONDS;
  if (!Number.isFinite(leeway) || leeway < 0) {
    throw new TypeError(`leeway must be a non-negative number of seconds, not ${leeway}`);
  }
  const alg = parsed.alg;
  if (!isAlgorithm(alg) || !key.permitted.includes(alg)) {
    const permits = key.permitted.length === 0 ? 'nothing' : key.permitted.join(', ');
    throw new VerifyError(
      'algorithm_not_permitted',
      `algorithm ${alg} is not permitted by key ${JSON.stringify(parsed.kid)} (it permits ${permits})`,
    );
  }
  await checkSignature(parsed, key, alg);
  return checkClaims(parsed.payload, expected, leeway);
}

async function checkSignature(parsed: ParsedToken, key: HeldKey, alg: Algorithm): Promise<void> {
  let imported;
  try {
    imported = await key.importFor(alg);
  } catch (cause) {
    throw new VerifyError('malformed', `key ${JSON.stringify(parsed.kid)} cannot be used: ${String(cause)}`, { cause });
  }
  try {
    // The header has no crit (checked above), so jose's own crit handling never applies;
    // `algorithms` pins the one algorithm the key permits and the token names.
    await compactVerify(parsed.token, imported, { algorithms: [alg] });
  } catch (cause) {
    if (cause instanceof joseErrors.JWSSignatureVerificationFailed) {
      throw new VerifyError('signature', 'invalid signature', { cause });
    }
    throw new VerifyError('malformed', `malformed token: ${String(cause)}`, { cause });
  }
}

/**
 * Rules 5 to 7. jose's `jwtVerify` checks the issuer and audience before the time, and refuses a
 * non-numeric `iat`, so these few lines apply the rules in their own order instead.
 */
function checkClaims(payload: Readonly<Record<string, unknown>>, expected: Expectations, leeway: number): Claims {
  const now = Math.floor((expected.currentDate?.getTime() ?? Date.now()) / 1000);
  const { exp, nbf } = payload;
  if (exp === undefined) {
    throw new VerifyError('claims', 'claims: missing required claim exp');
  }
  if (typeof exp !== 'number') {
    throw new VerifyError('claims', 'claims: exp is not a number');
  }
  if (nbf !== undefined && typeof nbf !== 'number') {
    throw new VerifyError('claims', 'claims: nbf is not a number');
  }
  if (now > exp + leeway) {
    throw new VerifyError('expired', 'token expired');
  }
  if (nbf !== undefined && nbf > now + leeway) {
    throw new VerifyError('not_yet_valid', 'token not valid yet (nbf)');
  }
  const issuers = list(expected.issuer);
  if (issuers.length > 0 && !(typeof payload.iss === 'string' && issuers.includes(payload.iss))) {
    throw new VerifyError('issuer', 'issuer is not one of the expected');
  }
  const audiences = list(expected.audience);
  if (audiences.length > 0) {
    const aud = payload.aud;
    const held = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
    if (!held.some((value) => typeof value === 'string' && audiences.includes(value))) {
      throw new VerifyError('audience', 'audience is not one of the expected');
    }
  }
  return { ...payload } as Claims;
}

/**
 * Verifies `token` with the keys of the JWKS document `jwks` alone (an object, JSON text, UTF-8
 * bytes or a parsed {@link KeySet}), by the same rules as {@link Verifier.verify}. A `kid` the
 * set lacks is `unknown_kid`. Resolves to the claims; rejects with a {@link VerifyError}.
 */
export async function verifyWithKeySet(token: string, jwks: unknown, expected: Expectations = {}): Promise<Claims> {
  const parsed = parseToken(token);
  const keys = KeySet.parse(jwks);
  const key = keys.find(parsed.kid);
  if (key === undefined) {
    throw new VerifyError('unknown_kid', `no key with kid ${JSON.stringify(parsed.kid)} in the key set`);
  }
  return verifyParsed(parsed, key, expected);
}
