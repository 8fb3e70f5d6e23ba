/** verifyWithKeySet: the rules without a server (the conformance runner covers every vector). */

import assert from 'node:assert/strict';
import { it } from 'node:test';

import { KeySet, VerifyError, permittedAlgorithms, verifyWithKeySet } from '@keyrelay/verifier';

import { AUDIENCE, ISSUER, newKey, sign } from './support/idp.js';

async function kind(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'accept';
  } catch (error) {
    assert.ok(error instanceof VerifyError, String(error));
    return error.kind;
  }
}

it('takes a key set as an object, JSON text, bytes or a parsed KeySet', async () => {
  const key = await newKey('ES256');
  const token = await sign(key);
  const document = { keys: [key.jwk] };
  for (const jwks of [document, JSON.stringify(document), Buffer.from(JSON.stringify(document)), KeySet.parse(document)]) {
    assert.equal((await verifyWithKeySet(token, jwks, { issuer: ISSUER, audience: AUDIENCE })).sub, 'alice');
  }
  assert.equal(await kind(verifyWithKeySet(token, '{"nokeys": []}')), 'malformed');
  assert.equal(await kind(verifyWithKeySet(token, 'not json')), 'malformed');
});

it('allows 60 s of clock skew by default', async () => {
  const key = await newKey('EdDSA');
  const now = Math.floor(Date.now() / 1000);
  const jwks = { keys: [key.jwk] };
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: now - 30 }), jwks)), 'accept');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: now - 90 }), jwks)), 'expired');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { nbf: now + 30 }), jwks)), 'accept');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { nbf: now + 90 }), jwks)), 'not_yet_valid');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: now - 90 }), jwks, { leeway: 120 })), 'accept');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: now - 10 }), jwks, { leeway: 0 })), 'expired');
  await assert.rejects(verifyWithKeySet(await sign(key), jwks, { leeway: -1 }), TypeError);
});

it('checks the time before the issuer and the audience, and never iat', async () => {
  const key = await newKey('ES256');
  const jwks = { keys: [key.jwk] };
  const now = Math.floor(Date.now() / 1000);
  const expected = { issuer: ISSUER, audience: AUDIENCE };
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: now - 7200, iss: 'x', aud: 'y' }), jwks, expected)), 'expired');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { iss: 'x', aud: 'y' }), jwks, expected)), 'issuer');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { iat: 'yesterday' }), jwks, expected)), 'accept');
  assert.equal(await kind(verifyWithKeySet(await sign(key, { exp: String(now + 60) }), jwks, expected)), 'claims');
});

it('takes the algorithm from the key', () => {
  assert.deepEqual(permittedAlgorithms({ kty: 'EC', crv: 'P-256' }), ['ES256']);
  assert.deepEqual(permittedAlgorithms({ kty: 'EC', crv: 'P-521' }), []);
  assert.deepEqual(permittedAlgorithms({ kty: 'OKP', crv: 'Ed25519', alg: 'Ed25519' }), ['EdDSA']);
  assert.deepEqual(permittedAlgorithms({ kty: 'RSA', alg: 'PS384' }), ['PS384']);
  assert.deepEqual(permittedAlgorithms({ kty: 'RSA', alg: 'ES256' }), []);
  assert.deepEqual(permittedAlgorithms({ kty: 'RSA', alg: 'HS256' }), []);
  assert.deepEqual(permittedAlgorithms({ kty: 'oct' }), []);
  assert.deepEqual(permittedAlgorithms({ kty: 'RSA', use: 'enc' }), []);
  assert.deepEqual(permittedAlgorithms({ kty: 'RSA', key_ops: ['verify'] }).length, 6);
});
