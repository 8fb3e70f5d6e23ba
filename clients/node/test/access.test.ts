/** A tenant that requires a verifier token: the access token goes as `authorization: Bearer`. */

import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';

import { ConnectError, Verifier, VerifyError } from '@keyrelay/verifier';

import { Admin } from './support/admin.js';
import { AUDIENCE, ISSUER, MockIdp, type SigningKey, newKey, sign } from './support/idp.js';
import { Keyrelay } from './support/keyrelay.js';

const TENANT = 'private';
let server: Keyrelay;
let idp: MockIdp;
let admin: Admin;
let key: SigningKey;
let secret: string;

before(async () => {
  server = await Keyrelay.start();
  key = await newKey('ES256');
  idp = await MockIdp.start([key]);
  admin = new Admin(server);
  await admin.register(TENANT, 'entra', idp.url);
  await admin.call('setTenantAccess', { tenant: TENANT, verifierTokenRequired: true });
  const created = await admin.call<{ secret: string }>('createToken', {
    role: 'TOKEN_ROLE_VERIFIER',
    tenant: TENANT,
    description: 'node verifier test',
  });
  secret = created.secret;
});

after(async () => {
  admin?.close();
  await server?.dispose();
  await idp?.close();
});

it('watches and resolves with the access token', async () => {
  const verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT, accessToken: secret });
  try {
    assert.deepEqual(
      verifier.status().providers.map((p) => p.provider),
      ['entra'],
    );
    assert.equal((await verifier.verify(await sign(key), { issuer: ISSUER, audience: AUDIENCE })).sub, 'alice');
    // A kid only the IdP has yet: the Resolve must carry the token too to find it.
    const added = await newKey('ES256');
    idp.keys = [key, added];
    assert.equal((await verifier.verify(await sign(added), { issuer: ISSUER, audience: AUDIENCE })).sub, 'alice');
  } finally {
    verifier.close();
  }
});

it('sees none of the tenant without the token', async () => {
  // keyrelay answers as if the tenant had no providers, so that tenant names do not leak.
  const verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT });
  try {
    assert.deepEqual(verifier.status().providers, []);
    await assert.rejects(
      verifier.verify(await sign(key), { issuer: ISSUER, audience: AUDIENCE, provider: 'entra' }),
      (error: unknown) => error instanceof VerifyError && error.kind === 'unknown_kid',
    );
  } finally {
    verifier.close();
  }
});

it('fails to connect with a token keyrelay does not know', async () => {
  await assert.rejects(
    Verifier.connect({ endpoint: server.endpoint, tenant: TENANT, accessToken: 'krt_0000000000000000_not-a-real-secret' }),
    (error: unknown) => error instanceof ConnectError && error.code === 16 && /UNAUTHENTICATED/.test(error.message),
  );
});
