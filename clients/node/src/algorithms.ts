/**
 * Which signature algorithms a key permits (rule 3 of clients/conformance/README.md): none for a
 * key not meant for signatures (`use` other than `sig`, `key_ops` without `verify`); otherwise
 * the algorithms of its type and curve, narrowed to the one its `alg` names when it names one.
 * HMAC is never permitted, and neither is ES512, which no keyrelay SDK verifies.
 */

/** The algorithms a keyrelay SDK verifies. */
export type Algorithm = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'EdDSA';

export const ALGORITHMS: readonly Algorithm[] = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'EdDSA',
];

const RSA: readonly Algorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];

export function isAlgorithm(name: string): name is Algorithm {
  return (ALGORITHMS as readonly string[]).includes(name);
}

/** The algorithms a token verified with `jwk` may use. */
export function permittedAlgorithms(jwk: Readonly<Record<string, unknown>>): readonly Algorithm[] {
  if (jwk.use !== undefined && jwk.use !== 'sig') {
    return [];
  }
  const ops = jwk.key_ops;
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('verify'))) {
    return [];
  }
  const ofType = ofKeyType(jwk);
  if (jwk.alg === undefined) {
    return ofType;
  }
  if (typeof jwk.alg !== 'string') {
    return [];
  }
  const named = jwk.alg === 'Ed25519' ? 'EdDSA' : jwk.alg;
  return isAlgorithm(named) && ofType.includes(named) ? [named] : [];
}

function ofKeyType(jwk: Readonly<Record<string, unknown>>): readonly Algorithm[] {
  switch (jwk.kty) {
    case 'RSA':
      return RSA;
    case 'EC':
      return jwk.crv === 'P-256' ? ['ES256'] : jwk.crv === 'P-384' ? ['ES384'] : [];
    case 'OKP':
      return jwk.crv === 'Ed25519' ? ['EdDSA'] : [];
    default:
      return [];
  }
}
