/** The Express example (examples/express.ts) protecting a route, with a real keyrelay. */

import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, it } from 'node:test';

import { Verifier } from '@keyrelay/verifier';

import { createApp } from '../examples/express.js';
import { Admin } from './support/admin.js';
import { AUDIENCE, ISSUER, MockIdp, type SigningKey, newKey, sign } from './support/idp.js';
import { Keyrelay } from './support/keyrelay.js';

let server: Keyrelay;
let idp: MockIdp;
let verifier: Verifier;
let http: Server;
let base: string;
let key: SigningKey;

before(async () => {
  server = await Keyrelay.start();
  key = await newKey('RS256');
  idp = await MockIdp.start([key]);
  const admin = new Admin(server);
  await admin.register('shop', 'auth0', idp.url);
  admin.close();
  verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: 'shop' });
  const app = createApp(verifier, { issuer: ISSUER, audience: AUDIENCE });
  http = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});

after(async () => {
  http?.closeAllConnections();
  await new Promise((resolve) => (http ? http.close(resolve) : resolve(undefined)));
  verifier?.close();
  await server?.dispose();
  await idp?.close();
});

async function get(path: string, token?: string): Promise<{ status: number; body: unknown; challenge: string | null }> {
  const response = await fetch(`${base}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
  return { status: response.status, body: await response.json(), challenge: response.headers.get('www-authenticate') };
}

it('lets a valid token through to the route', async () => {
  const response = await get('/me', await sign(key, { sub: 'carol' }));
  assert.deepEqual(response, { status: 200, body: { sub: 'carol' }, challenge: null });
});

it('answers 401 without a token', async () => {
  const response = await get('/me');
  assert.equal(response.status, 401);
  assert.equal(response.challenge, 'Bearer');
});

it('answers 401 with the refusal kind', async () => {
  const now = Math.floor(Date.now() / 1000);
  const cases: [Record<string, unknown>, string][] = [
    [{ exp: now - 3600 }, 'expired'],
    [{ aud: 'someone-else' }, 'audience'],
    [{ iss: 'https://evil.example' }, 'issuer'],
  ];
  for (const [claims, kind] of cases) {
    const response = await get('/me', await sign(key, claims));
    assert.equal(response.status, 401, kind);
    assert.deepEqual(response.body, { error: kind });
    assert.match(response.challenge ?? '', /invalid_token/);
  }
  const stranger = await newKey('ES256');
  assert.deepEqual((await get('/me', await sign(stranger))).body, { error: 'unknown_kid' });
});

it('reports its keys on /healthz', async () => {
  assert.deepEqual(await get('/healthz'), { status: 200, body: { state: 'connected', providers: 1 }, challenge: null });
});
