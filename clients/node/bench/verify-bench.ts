/**
 * verify() of the TypeScript SDK against bare jose on the same tokens, in one run (a bench, not
 * a test; scripts/bench_sdks.sh runs it with the other SDKs' benches).
 *
 * Usage: node --expose-gc build/bench/verify-bench.js FIXTURE.json RESULTS.json
 *   KEYRELAY_BIN  the keyrelay binary to start (default: target/debug/keyrelay)
 *   ROUNDS         rounds per comparison (default 41)
 *   BATCH_SECONDS  length of each timed batch (default 0.1)
 *
 * The bench starts keyrelay on 127.0.0.1 (embedded store in a temporary directory), serves the
 * fixture's JWKS documents from a local IdP, registers them, and connects a `Verifier`, which
 * then holds the keys keyrelay pushed. For each algorithm it times, in rounds whose order
 * alternates:
 *
 * - `Verifier.verify` on the held keys;
 * - `verifyWithKeySet` on a `KeySet` parsed once (`KeySet.parse`);
 * - bare jose: `jwtVerify(token, key, { algorithms: [alg], issuer, audience, clockTolerance: 60 })`
 *   with the key imported once (`importJWK`).
 *
 * Each verification is awaited before the next starts. The ratio of a round is the SDK's rate
 * over jose's in that round; the results are the medians over the rounds. Then the memory: the
 * V8 heap plus external memory (Buffers) after a full GC, added by a `Verifier` holding N key
 * sets, less that of one holding a single set, over N - 1.
 */

import { deepStrictEqual } from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

import { KeySet, Verifier, verifyWithKeySet } from '@keyrelay/verifier';
import { type JWK, decodeProtectedHeader, importJWK, jwtVerify } from 'jose';

import { Admin } from '../test/support/admin.js';
import { Keyrelay } from '../test/support/keyrelay.js';

interface Fixture {
  issuer: string;
  audience: string;
  bench: { tenant: string; provider: string; jwks: { keys: JWK[] } };
  tokens: Record<string, string>;
  memory: {
    tenant: string;
    single_tenant: string;
    providers: string[];
    jwks: { keys: JWK[] }[];
    token_provider: string;
    token_alg: string;
    token: string;
  };
}

/** Runs n verifications, one after the other. */
type Batch = (n: number) => Promise<unknown>;

type Row = Record<string, string | number>;

const ROUNDS = Number(process.env.ROUNDS ?? 41);
const SECONDS = Number(process.env.BATCH_SECONDS ?? 0.1);

function seconds(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e9;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] ?? NaN) : ((sorted[middle - 1] ?? NaN) + (sorted[middle] ?? NaN)) / 2;
}

/** How many verifications take about `SECONDS`. */
async function calibrate(run: Batch): Promise<number> {
  for (let n = 16; ; n *= 2) {
    const started = process.hrtime.bigint();
    await run(n);
    const elapsed = seconds(started);
    if (elapsed >= 0.05) {
      return Math.max(16, Math.floor((n * SECONDS) / elapsed));
    }
  }
}

/** Verifications per second of each variant, per round, the order alternating. */
async function compare(variants: Record<string, Batch>): Promise<Record<string, number[]>> {
  const bare = variants.bare;
  if (bare === undefined) {
    throw new Error('no bare variant');
  }
  const n = await calibrate(bare);
  for (const run of Object.values(variants)) {
    await run(Math.max(1, Math.floor(n / 10)));
  }
  const names = Object.keys(variants);
  const rates: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of round % 2 === 0 ? names : [...names].reverse()) {
      const started = process.hrtime.bigint();
      await variants[name]?.(n);
      rates[name]?.push(n / seconds(started));
    }
  }
  return rates;
}

function rowsOf(rates: Record<string, number[]>, alg: string, library: string, note = ''): Row[] {
  const bare = rates.bare ?? [];
  return Object.entries(rates)
    .filter(([name]) => name !== 'bare')
    .map(([name, values]) => {
      const ratios = values.map((value, index) => value / (bare[index] ?? NaN));
      return {
        sdk: 'TypeScript',
        path: name + note,
        alg,
        bare: library,
        sdk_ops: median(values),
        bare_ops: median(bare),
        ratio: median(ratios),
        ratio_min: Math.min(...ratios),
        ratio_max: Math.max(...ratios),
        rounds: values.length,
      };
    });
}

/** JWKS documents at fixed paths, on 127.0.0.1. */
async function staticIdp(documents: Map<string, string>): Promise<{ server: Server; url: (path: string) => string }> {
  const server = createServer((request, response) => {
    const body = documents.get(request.url ?? '');
    if (request.method !== 'GET' || body === undefined) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'public, max-age=3600' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return { server, url: (path) => `http://127.0.0.1:${port}${path}` };
}

/** Registers (tenant, provider, path) eight at a time. */
async function registerAll(admin: Admin, url: (path: string) => string, sets: [string, string, string][]): Promise<void> {
  let next = 0;
  const worker = async () => {
    for (let index = next++; index < sets.length; index = next++) {
      const [tenant, provider, path] = sets[index] as [string, string, string];
      await admin.register(tenant, provider, url(path));
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}

/** V8 heap plus external memory after full garbage collections. */
function heldBytes(): number {
  const gc = globalThis.gc;
  if (gc === undefined) {
    throw new Error('run with node --expose-gc');
  }
  gc();
  gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.external;
}

function bareBatch(token: string, key: Awaited<ReturnType<typeof importJWK>>, alg: string, fixture: Fixture): Batch {
  const options = { algorithms: [alg], issuer: fixture.issuer, audience: fixture.audience, clockTolerance: 60 };
  return async (n) => {
    for (let i = 0; i < n; i++) {
      await jwtVerify(token, key, options);
    }
  };
}

function verifierBatch(verifier: Verifier, token: string, fixture: Fixture): Batch {
  const expected = { issuer: fixture.issuer, audience: fixture.audience };
  return async (n) => {
    for (let i = 0; i < n; i++) {
      await verifier.verify(token, expected);
    }
  };
}

async function main(): Promise<void> {
  const [fixturePath, outPath] = process.argv.slice(2);
  if (fixturePath === undefined || outPath === undefined) {
    throw new Error('usage: node --expose-gc build/bench/verify-bench.js FIXTURE.json RESULTS.json');
  }
  const fixture = JSON.parse(readFileSync(fixturePath, 'utf8')) as Fixture;
  const { bench, memory } = fixture;
  const joseVersion = (JSON.parse(readFileSync(new URL(import.meta.resolve('jose/package.json')), 'utf8')) as { version: string })
    .version;
  const library = `jose ${joseVersion}`;
  const expected = { issuer: fixture.issuer, audience: fixture.audience };

  const documents = new Map<string, string>([['/bench.json', JSON.stringify(bench.jwks)]]);
  memory.providers.forEach((provider, index) => documents.set(`/${provider}.json`, JSON.stringify(memory.jwks[index])));
  const idp = await staticIdp(documents);
  const server = await Keyrelay.start();
  const admin = new Admin(server);
  const rows: Row[] = [];
  const verifiers: Verifier[] = [];
  try {
    const started = process.hrtime.bigint();
    await registerAll(admin, idp.url, [[bench.tenant, bench.provider, '/bench.json']]);
    await registerAll(admin, idp.url, [
      ...memory.providers.map((provider): [string, string, string] => [memory.tenant, provider, `/${provider}.json`]),
      [memory.single_tenant, memory.providers[0] ?? '', `/${memory.providers[0]}.json`],
    ]);
    console.log(`node: ${documents.size + 1} providers registered in ${seconds(started).toFixed(1)} s`);

    const verifier = await Verifier.connect({ endpoint: server.endpoint, tenant: bench.tenant });
    verifiers.push(verifier);
    const keySet = KeySet.parse(bench.jwks);
    for (const [alg, token] of Object.entries(fixture.tokens)) {
      const kid = decodeProtectedHeader(token).kid;
      const jwk = bench.jwks.keys.find((key) => key.kid === kid);
      if (jwk === undefined) {
        throw new Error(`no key ${kid} in the fixture`);
      }
      const key = await importJWK(jwk, alg);
      const claims = (await jwtVerify(token, key, { algorithms: [alg], ...expected })).payload;
      deepStrictEqual(await verifier.verify(token, expected), claims);
      deepStrictEqual(await verifyWithKeySet(token, keySet, expected), claims);
      const rates = await compare({
        'Verifier.verify': verifierBatch(verifier, token, fixture),
        'verifyWithKeySet (KeySet parsed once)': async (n) => {
          for (let i = 0; i < n; i++) {
            await verifyWithKeySet(token, keySet, expected);
          }
        },
        bare: bareBatch(token, key, alg, fixture),
      });
      rows.push(...rowsOf(rates, alg, library));
    }

    const n = memory.providers.length;
    let before = heldBytes();
    const single = await Verifier.connect({ endpoint: server.endpoint, tenant: memory.single_tenant });
    verifiers.push(single);
    const one = heldBytes() - before;
    before = heldBytes();
    const many = await Verifier.connect({ endpoint: server.endpoint, tenant: memory.tenant, firstSyncTimeoutMs: 60_000 });
    verifiers.push(many);
    const held = heldBytes() - before;
    if (many.status().providers.length !== n) {
      throw new Error('not every key set arrived');
    }
    rows.push({
      sdk: 'TypeScript',
      kind: 'memory',
      sets: n,
      keys_per_set: 2,
      bytes_per_set: (held - one) / (n - 1),
      verifier_one_set: one,
      verifier_all_sets: held,
      method: 'V8 heapUsed + external after gc(): (with N sets - with 1 set) / (N - 1)',
    });

    const kid = decodeProtectedHeader(memory.token).kid;
    const jwk = memory.jwks[memory.providers.indexOf(memory.token_provider)]?.keys.find((key) => key.kid === kid);
    if (jwk === undefined) {
      throw new Error(`no key ${kid} in the fixture`);
    }
    const key = await importJWK(jwk, memory.token_alg);
    const rates = await compare({
      'Verifier.verify': verifierBatch(many, memory.token, fixture),
      bare: bareBatch(memory.token, key, memory.token_alg, fixture),
    });
    rows.push(...rowsOf(rates, memory.token_alg, library, `, ${n} sets held`));
  } finally {
    for (const verifier of verifiers) {
      verifier.close();
    }
    admin.close();
    await server.dispose();
    idp.server.closeAllConnections();
    idp.server.close();
  }

  const meta = {
    sdk: 'TypeScript',
    kind: 'meta',
    runtime: `Node ${process.versions.node} (V8 ${process.versions.v8})`,
    library,
    rounds: ROUNDS,
    seconds_per_batch: SECONDS,
    clock: 'wall',
  };
  writeFileSync(outPath, JSON.stringify([meta, ...rows], null, 1));
  for (const row of rows) {
    if (row.kind === 'memory') {
      console.log(`node: ${Math.round(Number(row.bytes_per_set)).toLocaleString('en-US')} B per key set held (${row.sets} sets)`);
    } else {
      console.log(
        `node: ${String(row.path).padEnd(40)} ${String(row.alg).padEnd(6)} ${Math.round(Number(row.sdk_ops)).toLocaleString('en-US').padStart(8)}/s ` +
          `bare ${Math.round(Number(row.bare_ops)).toLocaleString('en-US').padStart(8)}/s ratio ${Number(row.ratio).toFixed(3)} ` +
          `(${Number(row.ratio_min).toFixed(2)}-${Number(row.ratio_max).toFixed(2)})`,
      );
    }
  }
}

await main();
