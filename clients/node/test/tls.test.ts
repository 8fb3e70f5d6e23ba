/** keyrelay with TLS on its gRPC listener and client certificates required (mutual TLS). */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';

import { ConnectError, Verifier } from '@keyrelay/verifier';

import { Admin } from './support/admin.js';
import { AUDIENCE, ISSUER, MockIdp, type SigningKey, newKey, sign } from './support/idp.js';
import { Keyrelay } from './support/keyrelay.js';
import { type Issued, TestCa } from './support/pki.js';

let dir: string;
let ca: TestCa;
let client: Issued;
let server: Keyrelay;
let idp: MockIdp;
let key: SigningKey;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyrelay-node-tls-'));
  ca = new TestCa();
  const leaf = ca.server();
  client = ca.client();
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text, { mode: 0o600 });
    return path;
  };
  server = await Keyrelay.start({
    tls: {
      cert: file('server.pem', leaf.cert + ca.cert),
      key: file('server.key', leaf.key),
      clientCa: file('ca.pem', ca.cert),
    },
  });
  key = await newKey('EdDSA');
  idp = await MockIdp.start([key]);
  const admin = new Admin(server, { ca: ca.cert, cert: client.cert, key: client.key });
  await admin.register('secure', 'idp', idp.url);
  admin.close();
});

after(async () => {
  await server?.dispose();
  await idp?.close();
  rmSync(dir, { recursive: true, force: true });
});

it('verifies over mutual TLS', async () => {
  assert.match(server.endpoint, /^https:\/\/127\.0\.0\.1:/);
  const verifier = await Verifier.connect({
    endpoint: server.endpoint,
    tenant: 'secure',
    tls: { ca: ca.cert, cert: client.cert, key: client.key },
  });
  try {
    assert.equal(verifier.status().state, 'connected');
    assert.equal((await verifier.verify(await sign(key), { issuer: ISSUER, audience: AUDIENCE })).sub, 'alice');
    const added = await newKey('ES256');
    idp.keys = [key, added];
    assert.equal((await verifier.verify(await sign(added), { issuer: ISSUER, audience: AUDIENCE })).sub, 'alice', 'Resolve over TLS');
  } finally {
    verifier.close();
  }
});

it('cannot connect without a client certificate', async () => {
  await assert.rejects(
    Verifier.connect({ endpoint: server.endpoint, tenant: 'secure', tls: { ca: ca.cert }, firstSyncTimeoutMs: 1500 }),
    (error: unknown) => error instanceof ConnectError && /UNAVAILABLE/.test(error.message),
  );
});

it('cannot connect to a server its CA did not sign', async () => {
  const other = new TestCa('another-ca');
  const otherClient = other.client();
  await assert.rejects(
    Verifier.connect({
      endpoint: server.endpoint,
      tenant: 'secure',
      tls: { ca: other.cert, cert: otherClient.cert, key: otherClient.key },
      firstSyncTimeoutMs: 1500,
    }),
    (error: unknown) => error instanceof ConnectError && /UNAVAILABLE/.test(error.message),
  );
});

it('refuses TLS settings for a plain-text endpoint', async () => {
  await assert.rejects(
    Verifier.connect({ endpoint: `http://127.0.0.1:${server.grpcPort}`, tenant: 'secure', tls: { ca: ca.cert } }),
    /https:\/\//,
  );
});
