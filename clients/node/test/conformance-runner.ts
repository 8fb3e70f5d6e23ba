/**
 * The conformance runner: verifies every materialized vector (clients/conformance) with the
 * offline verifyWithKeySet and writes one JSON line per vector: {"name", "verdict", "sub"}.
 *
 * Usage: node build/test/conformance-runner.js VECTORS.json OUT.jsonl
 */

import { readFileSync, writeFileSync } from 'node:fs';

import { isVerifyError, verifyWithKeySet } from '@keyrelay/verifier';

interface Vector {
  name: string;
  jwks: unknown;
  token: string;
  expect: { issuers: string[]; audiences: string[]; leeway: number };
}

async function main(argv: readonly string[]): Promise<number> {
  const [vectorsPath, outPath] = argv;
  if (vectorsPath === undefined || outPath === undefined || argv.length !== 2) {
    console.error('usage: conformance-runner VECTORS.json OUT.jsonl');
    return 2;
  }
  const { vectors } = JSON.parse(readFileSync(vectorsPath, 'utf8')) as { vectors: Vector[] };
  const lines: string[] = [];
  let failures = 0;
  for (const vector of vectors) {
    let result: { name: string; verdict: string; sub: unknown };
    try {
      const claims = await verifyWithKeySet(vector.token, vector.jwks, {
        issuer: vector.expect.issuers,
        audience: vector.expect.audiences,
        leeway: vector.expect.leeway,
      });
      result = { name: vector.name, verdict: 'accept', sub: claims.sub ?? null };
    } catch (error) {
      if (!isVerifyError(error)) {
        failures += 1;
        console.error(`conformance-runner: ${vector.name}: unexpected error`, error);
        result = { name: vector.name, verdict: `error: ${String(error)}`, sub: null };
      } else {
        result = { name: vector.name, verdict: error.kind, sub: null };
      }
    }
    lines.push(JSON.stringify(result));
  }
  writeFileSync(outPath, lines.map((line) => `${line}\n`).join(''));
  console.error(`conformance-runner: ${vectors.length} vectors -> ${outPath}`);
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));
