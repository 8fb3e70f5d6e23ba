/** JWKS documents parsed for verification: each key with the algorithms it permits. */

import { importJWK } from 'jose';

import { type Algorithm, permittedAlgorithms } from './algorithms.js';
import { VerifyError } from './errors.js';

type ImportedKey = Awaited<ReturnType<typeof importJWK>>;

/** The public members of each key type: all jose needs to import a key. */
const PUBLIC_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  RSA: ['kty', 'n', 'e'],
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
};

/** One public key of a key set. */
export class HeldKey {
  /** The key's `kid`, if it has one. */
  readonly kid: string | undefined;
  /** The JWK as published. */
  readonly jwk: Readonly<Record<string, unknown>>;
  /** The algorithms a token verified with this key may use (empty: none). */
  readonly permitted: readonly Algorithm[];
  readonly #imported = new Map<Algorithm, Promise<ImportedKey>>();

  constructor(jwk: Readonly<Record<string, unknown>>) {
    this.jwk = jwk;
    this.kid = typeof jwk.kid === 'string' ? jwk.kid : undefined;
    this.permitted = permittedAlgorithms(jwk);
  }

  /** The key imported for `alg` (once per algorithm; jose binds a CryptoKey to one). */
  importFor(alg: Algorithm): Promise<ImportedKey> {
    let imported = this.#imported.get(alg);
    if (imported === undefined) {
      const members = PUBLIC_MEMBERS[String(this.jwk.kty)] ?? [];
      const material = Object.fromEntries(
        members.filter((name) => this.jwk[name] !== undefined).map((name) => [name, this.jwk[name]]),
      );
      imported = importJWK(material, alg);
      // A key that cannot be imported fails every time; do not keep a rejected promise alive
      // unobserved, but do keep it so each attempt answers the same.
      imported.catch(() => undefined);
      this.#imported.set(alg, imported);
    }
    return imported;
  }
}

/** A JWKS document (`{"keys": [...]}`) ready for verification. */
export class KeySet {
  readonly keys: readonly HeldKey[];
  readonly #byKid: ReadonlyMap<string, HeldKey>;

  private constructor(keys: HeldKey[]) {
    this.keys = keys;
    const byKid = new Map<string, HeldKey>();
    for (const key of keys) {
      if (key.kid !== undefined && !byKid.has(key.kid)) {
        byKid.set(key.kid, key);
      }
    }
    this.#byKid = byKid;
  }

  /**
   * Parses a JWKS document: an object, JSON text or UTF-8 bytes. Entries that are not JSON
   * objects are left out. Throws a `malformed` {@link VerifyError} for anything that is not a
   * key set.
   */
  static parse(document: unknown): KeySet {
    if (document instanceof KeySet) {
      return document;
    }
    let value = document;
    if (typeof value === 'string' || value instanceof Uint8Array) {
      try {
        const text = typeof value === 'string' ? value : new TextDecoder('utf-8', { fatal: true }).decode(value);
        value = JSON.parse(text);
      } catch (cause) {
        throw new VerifyError('malformed', 'key set: not UTF-8 JSON', { cause });
      }
    }
    if (!isObject(value) || !Array.isArray(value.keys)) {
      throw new VerifyError('malformed', 'key set: not a JWKS document (no "keys" array)');
    }
    const keys = (value.keys as unknown[]).filter(isObject).map((jwk) => new HeldKey(jwk));
    return new KeySet(keys);
  }

  /** The key with this `kid`. */
  find(kid: string): HeldKey | undefined {
    return this.#byKid.get(kid);
  }

  /** Every kid of the set, in the document's order. */
  kids(): string[] {
    return this.keys.flatMap((key) => (key.kid === undefined ? [] : [key.kid]));
  }
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
