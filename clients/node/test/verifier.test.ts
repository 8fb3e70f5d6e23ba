/**
 * The Verifier against a real keyrelay: verify, a rotation, keyrelay stopped and restarted, and
 * one shared Resolve for an unknown kid. The steps share one server and run in order. Then, on a
 * server of its own, a key revoked by an administrator and reinstated.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Verifier, VerifyError, type VerifierEvents } from '@keyrelay/verifier';

import { Admin } from './support/admin.js';
import { AUDIENCE, ISSUER, MockIdp, type SigningKey, newKey, sign } from './support/idp.js';
import { Keyrelay } from './support/keyrelay.js';
import { nextEvent, waitFor } from './support/wait.js';

const TENANT = 'acme';
const PROVIDER = 'okta';
const RESOLVE = { method: 'keyrelay.v1.KeyService/Resolve' };
const expected = { issuer: ISSUER, audience: AUDIENCE };

async function refusal(promise: Promise<unknown>): Promise<VerifyError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof VerifyError, `expected a VerifyError, got ${String(error)}`);
    return error;
  }
  assert.fail('the token was accepted');
}

describe('Verifier with a real keyrelay', () => {
  let server: Keyrelay;
  let idp: MockIdp;
  let admin: Admin;
  let verifier: Verifier;
  let first: SigningKey;
  let version: number;

  before(async () => {
    server = await Keyrelay.start();
    first = await newKey('ES256');
    idp = await MockIdp.start([first]);
    admin = new Admin(server);
    await admin.register(TENANT, PROVIDER, idp.url);
    verifier = await Verifier.connect({
      endpoint: server.endpoint,
      tenant: TENANT,
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    });
  });

  after(async () => {
    verifier?.close();
    admin?.close();
    await server?.dispose();
    await idp?.close();
  });

  it('verifies a token with the keys of the stream', async () => {
    const status = verifier.status();
    assert.equal(status.state, 'connected');
    assert.equal(status.connected, true);
    assert.equal(status.providers.length, 1);
    const [okta] = status.providers;
    assert.equal(okta?.provider, PROVIDER);
    assert.equal(okta?.version, 1);
    assert.deepEqual(okta?.kids, [first.kid]);
    assert.equal(okta?.state, 'READY');
    assert.ok(okta?.ageMs !== undefined && okta.ageMs >= 0 && okta.ageMs < 60_000, `age ${okta?.ageMs}`);
    version = 1;

    const claims = await verifier.verify(await sign(first, { sub: 'bob' }), expected);
    assert.equal(claims.sub, 'bob');
    assert.equal((await refusal(verifier.verify(await sign(first, { iss: 'https://evil.example' }), expected))).kind, 'issuer');
    assert.equal((await refusal(verifier.verify(await sign(first, { aud: 'other' }), expected))).kind, 'audience');
    const expired = await sign(first, { exp: Math.floor(Date.now() / 1000) - 120 });
    assert.equal((await refusal(verifier.verify(expired, expected))).kind, 'expired');
    assert.equal((await verifier.verify(expired, { ...expected, leeway: 300 })).sub, 'alice');
    assert.equal((await refusal(verifier.verify('not.a.jwt', expected))).kind, 'malformed');
    assert.equal((await refusal(verifier.verify(await sign(first), { ...expected, provider: 'other' }))).kind, 'unknown_kid');
  });

  it('watches only the providers named', async () => {
    const named = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT, providers: [PROVIDER, 'absent'] });
    try {
      assert.deepEqual(
        named.status().providers.map((p) => [p.provider, p.version]),
        [[PROVIDER, version]],
      );
      assert.equal((await named.verify(await sign(first), { ...expected, provider: PROVIDER })).sub, 'alice');
      const unwatched = await refusal(named.verify(await sign(first), { ...expected, provider: 'elsewhere' }));
      assert.equal(unwatched.kind, 'unknown_kid');
    } finally {
      named.close();
    }
  });

  it('receives a rotation at the IdP and verifies with the new key', async () => {
    const second = await newKey('RS256');
    const token = await sign(second);
    idp.keys = [first, second];
    const arrived = nextEvent<VerifierEvents['keySet']>(verifier, 'keySet', {
      accept: (event) => event.source === 'watch' && event.version === version + 1,
    });
    const refreshed = await admin.refresh(TENANT, PROVIDER);
    assert.equal(refreshed.status?.version, String(version + 1));
    await arrived;
    version += 1;
    assert.deepEqual(verifier.status().providers[0]?.kids, [first.kid, second.kid]);
    assert.equal((await verifier.verify(token, expected)).sub, 'alice');
    assert.equal((await verifier.verify(await sign(first), expected)).sub, 'alice', 'the old key still verifies');
  });

  it('asks keyrelay once for an unknown kid, for 50 concurrent callers', async () => {
    const third = await newKey('EdDSA');
    idp.keys = [...idp.keys, third];
    const token = await sign(third);
    const resolves: VerifierEvents['resolve'][0][] = [];
    const onResolve = (event: VerifierEvents['resolve'][0]) => resolves.push(event);
    verifier.on('resolve', onResolve);
    try {
      const before = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
      const results = await Promise.allSettled(Array.from({ length: 50 }, () => verifier.verify(token, expected)));
      const rejected = results.filter((result) => result.status === 'rejected');
      assert.deepEqual(rejected, [], 'every caller is answered with the key the Resolve brought');
      const afterCount = await waitFor(
        async () => {
          const count = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
          return count > before ? count : undefined;
        },
        { what: 'the Resolve to be counted' },
      );
      assert.equal(afterCount - before, 1, 'exactly one Resolve');
      assert.deepEqual(resolves, [{ provider: PROVIDER, kid: third.kid, code: 0, found: true }]);
      version = verifier.status().providers[0]?.version ?? 0;

      // A kid that exists nowhere: one Resolve for all, then unknown_kid for every caller; asked
      // again at once, the cooldown keeps the SDK from asking again.
      const stranger = await newKey('ES256');
      const unknown = await sign(stranger);
      const before2 = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
      const refusals = await Promise.all(Array.from({ length: 50 }, () => refusal(verifier.verify(unknown, expected))));
      assert.deepEqual(new Set(refusals.map((error) => error.kind)), new Set(['unknown_kid']));
      assert.equal((await refusal(verifier.verify(unknown, expected))).kind, 'unknown_kid');
      const after2 = await waitFor(
        async () => {
          const count = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
          return count > before2 ? count : undefined;
        },
        { what: 'the second Resolve to be counted' },
      );
      assert.equal(after2 - before2, 1, 'exactly one Resolve for 51 calls');
      assert.equal(resolves.length, 2);
      assert.equal(resolves[1]?.found, false);
    } finally {
      verifier.off('resolve', onResolve);
    }
  });

  it('keeps verifying with the held keys while keyrelay is down', async () => {
    const token = await sign(first);
    const disconnected = nextEvent(verifier, 'disconnected');
    await server.stop();
    await disconnected;
    const status = verifier.status();
    assert.equal(status.state, 'disconnected');
    assert.equal(status.connected, false);
    assert.ok(status.lastError, 'the reason is reported');
    assert.equal(status.providers[0]?.version, version, 'the keys are still held');
    assert.equal((await verifier.verify(token, expected)).sub, 'alice');
    const stranger = await newKey('ES256');
    assert.equal((await refusal(verifier.verify(await sign(stranger), expected))).kind, 'unknown_kid');
  });

  it('resumes after a restart with nothing already held sent again', async () => {
    const received: VerifierEvents['keySet'][0][] = [];
    const onKeySet = (event: VerifierEvents['keySet'][0]) => received.push(event);
    verifier.on('keySet', onKeySet);
    try {
      const connected = nextEvent(verifier, 'connected', { timeoutMs: 20_000 });
      await server.restart();
      await connected;
      assert.equal(verifier.status().state, 'connected');
      assert.equal(received.length, 0, `no key set is sent again: ${JSON.stringify(received)}`);
      // This verifier is the restarted server's only subscriber: it was sent `synced` alone.
      assert.equal(await server.counter('keyrelay_watch_events_total'), 1);
      assert.equal(verifier.status().providers[0]?.version, version);

      // The resumed stream carries the next change.
      const fourth = await newKey('ES256');
      idp.keys = [...idp.keys, fourth];
      const arrived = nextEvent<VerifierEvents['keySet']>(verifier, 'keySet', {
        accept: (event) => event.version === version + 1,
      });
      await admin.refresh(TENANT, PROVIDER);
      await arrived;
      assert.deepEqual(
        received.map((event) => [event.version, event.source]),
        [[version + 1, 'watch']],
      );
      assert.equal((await verifier.verify(await sign(fourth), expected)).sub, 'alice');
    } finally {
      verifier.off('keySet', onKeySet);
    }
  });

  it('stops on close', async () => {
    verifier.close();
    assert.equal(verifier.status().state, 'closed');
    await assert.rejects(verifier.verify(await sign(first), expected), /closed/);
  });
});

describe('a tenant of several providers', () => {
  let server: Keyrelay;
  let okta: MockIdp;
  let auth0: MockIdp;
  let admin: Admin;
  let verifier: Verifier;
  let a: SigningKey;
  let b: SigningKey;

  before(async () => {
    server = await Keyrelay.start();
    [a, b] = [await newKey('ES256'), await newKey('RS256')];
    [okta, auth0] = [await MockIdp.start([a]), await MockIdp.start([b])];
    admin = new Admin(server);
    await admin.register(TENANT, 'okta', okta.url);
    await admin.register(TENANT, 'auth0', auth0.url);
    verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT });
  });

  after(async () => {
    verifier?.close();
    admin?.close();
    await server?.dispose();
    await okta?.close();
    await auth0?.close();
  });

  it('finds a key of any provider, and forgets a removed one', async () => {
    assert.deepEqual(verifier.status().providers.map((p) => p.provider), ['auth0', 'okta']);
    assert.equal((await verifier.verify(await sign(a, { sub: 'kim' }), expected)).sub, 'kim');
    assert.equal((await verifier.verify(await sign(b, { sub: 'lee' }), expected)).sub, 'lee');
    const elsewhere = await refusal(verifier.verify(await sign(b), { ...expected, provider: 'okta' }));
    assert.equal(elsewhere.kind, 'unknown_kid');

    await admin.unregister(TENANT, 'okta');
    await waitFor(() => verifier.status().providers.length === 1, { what: 'okta removed' });
    assert.equal((await refusal(verifier.verify(await sign(a), expected))).kind, 'unknown_kid');
    assert.equal((await verifier.verify(await sign(b, { sub: 'lee' }), expected)).sub, 'lee');
  });
});

describe('a tenant with a provider registered by issuer', () => {
  let server: Keyrelay;
  let idp: MockIdp;
  let admin: Admin;
  let verifier: Verifier;
  let ours: SigningKey;
  let theirs: SigningKey;
  let onlyOkta: SigningKey;
  let issuer: string;

  before(async () => {
    server = await Keyrelay.start();
    [ours, theirs, onlyOkta] = [await newKey('ES256'), await newKey('ES256'), await newKey('EdDSA')];
    idp = await MockIdp.start([{ ...theirs, jwk: { ...theirs.jwk, kid: 'shared' } }]);
    issuer = `${idp.origin}/tenants/acme`;
    idp.documents.set('/tenants/acme/.well-known/openid-configuration', { issuer, jwks_uri: `${idp.origin}/okta-keys` });
    idp.documents.set('/okta-keys', { keys: [{ ...ours.jwk, kid: 'shared' }, onlyOkta.jwk] });
    admin = new Admin(server);
    await admin.register(TENANT, 'okta', '', issuer);
    // Named to come first: a search by kid alone in name order would pick its key.
    await admin.register(TENANT, 'aaa-legacy', idp.url);
    verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT });
  });

  after(async () => {
    verifier?.close();
    admin?.close();
    await server?.dispose();
    await idp?.close();
  });

  it('routes a token by its issuer before its kid', async () => {
    const okta = verifier.status().providers.find((p) => p.provider === 'okta');
    assert.equal(okta?.issuer, issuer);
    const both = { issuer: [issuer, ISSUER], audience: AUDIENCE };
    assert.equal((await verifier.verify(await sign(ours, { iss: issuer }, 'shared'), both)).iss, issuer);
    assert.equal((await verifier.verify(await sign(theirs, { sub: 'lee' }, 'shared'), both)).sub, 'lee');
    for (const provider of [undefined, 'okta']) {
      const refused = await refusal(verifier.verify(await sign(onlyOkta), { ...both, provider }));
      assert.equal(refused.kind, 'issuer', `${provider}: ${refused.message}`);
    }
  });
});

describe('a key revoked by a keyrelay administrator', () => {
  let server: Keyrelay;
  let idp: MockIdp;
  let admin: Admin;
  let verifier: Verifier;
  let kept: SigningKey;
  let leaked: SigningKey;

  before(async () => {
    server = await Keyrelay.start();
    kept = await newKey('ES256');
    leaked = await newKey('RS256');
    idp = await MockIdp.start([kept, leaked]);
    admin = new Admin(server);
    await admin.register(TENANT, PROVIDER, idp.url);
    verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: TENANT });
  });

  after(async () => {
    verifier?.close();
    admin?.close();
    await server?.dispose();
    await idp?.close();
  });

  const okta = () => verifier.status().providers.find((held) => held.provider === PROVIDER);
  const nextVersion = (version: number) =>
    nextEvent<VerifierEvents['keySet']>(verifier, 'keySet', {
      accept: (event) => event.provider === PROVIDER && event.version === version,
    });

  it('is refused as revoked without a Resolve, while the other key verifies, until reinstated', async () => {
    const token = await sign(leaked, { sub: 'mallory' });
    assert.equal((await verifier.verify(token, expected)).sub, 'mallory');
    assert.equal(okta()?.version, 1);
    assert.deepEqual(okta()?.revokedKids, []);

    const revocation = nextVersion(2);
    const revoked = await admin.revokeKey(TENANT, PROVIDER, leaked.kid, 'the private key leaked');
    assert.equal(revoked.alreadyRevoked, false);
    assert.equal(revoked.inKeySet, true);
    assert.deepEqual(
      revoked.provider.status?.revokedKeys.map((key) => key.kid),
      [leaked.kid],
    );
    await revocation;
    assert.equal(okta()?.version, 2);
    assert.deepEqual(okta()?.kids, [kept.kid]);
    assert.deepEqual(okta()?.revokedKids, [leaked.kid]);

    const resolves: VerifierEvents['resolve'][0][] = [];
    const onResolve = (event: VerifierEvents['resolve'][0]) => resolves.push(event);
    verifier.on('resolve', onResolve);
    try {
      const before = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
      const refused = await refusal(verifier.verify(token, expected));
      assert.equal(refused.kind, 'revoked');
      assert.equal(
        refused.message,
        `kid ${JSON.stringify(leaked.kid)} of ${TENANT}/${PROVIDER} was revoked by a keyrelay administrator`,
      );
      assert.equal((await refusal(verifier.verify(token, { ...expected, provider: PROVIDER }))).kind, 'revoked');
      const concurrent = await Promise.all(Array.from({ length: 20 }, () => refusal(verifier.verify(token, expected))));
      assert.deepEqual(new Set(concurrent.map((error) => error.kind)), new Set(['revoked']));
      assert.equal((await verifier.verify(await sign(kept, { sub: 'bob' }), expected)).sub, 'bob', 'the other key verifies');
      assert.equal(resolves.length, 0, `the SDK asked keyrelay for the revoked kid: ${JSON.stringify(resolves)}`);

      // A kid that exists nowhere makes one Resolve: once it is counted, any Resolve made for
      // the revoked kid before it would be too.
      const stranger = await newKey('ES256');
      assert.equal((await refusal(verifier.verify(await sign(stranger), expected))).kind, 'unknown_kid');
      const afterCount = await waitFor(
        async () => {
          const count = await server.counter('keyrelay_rpc_requests_total', RESOLVE);
          return count > before ? count : undefined;
        },
        { what: 'the Resolve to be counted' },
      );
      assert.equal(afterCount - before, 1, 'only the unknown kid was resolved, not the revoked one');
      assert.deepEqual(
        resolves.map((event) => event.kid),
        [stranger.kid],
      );
    } finally {
      verifier.off('resolve', onResolve);
    }

    const reinstatement = nextVersion(3);
    const reinstated = await admin.reinstateKey(TENANT, PROVIDER, leaked.kid);
    assert.equal(reinstated.inKeySet, true);
    assert.deepEqual(reinstated.provider.status?.revokedKeys, []);
    await reinstatement;
    assert.equal(okta()?.version, 3);
    assert.deepEqual(okta()?.kids.slice().sort(), [kept.kid, leaked.kid].sort());
    assert.deepEqual(okta()?.revokedKids, []);
    assert.equal((await verifier.verify(token, expected)).sub, 'mallory', 'the reinstated key verifies again');
    assert.equal((await verifier.verify(await sign(kept), expected)).sub, 'alice');
  });
});
