/**
 * A mock identity provider: a JWKS document on 127.0.0.1 that the test controls, other documents
 * (issuer metadata, more key sets) at chosen paths, and keys to sign with.
 */

import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

import { type CryptoKey, type JWK, SignJWT, exportJWK, generateKeyPair } from 'jose';

export interface SigningKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  /** The public JWK as published. */
  jwk: JWK;
}

let counter = 0;

/** A new key pair; the published JWK names no `alg` unless `publishAlg` is set. */
export async function newKey(alg: 'RS256' | 'ES256' | 'EdDSA' = 'ES256', publishAlg = false): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  counter += 1;
  const kid = `${alg.toLowerCase()}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, use: 'sig' };
  if (publishAlg) {
    jwk.alg = alg;
  }
  return { kid, alg, privateKey, jwk };
}

export const ISSUER = 'https://idp.test.example';
export const AUDIENCE = 'api';

/** A token signed with `key`: default claims (iss, aud, sub, exp in an hour) plus `claims`. */
export async function sign(key: SigningKey, claims: Record<string, unknown> = {}, kid: string = key.kid): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: now, exp: now + 3600, ...claims })
    .setProtectedHeader({ alg: key.alg, kid })
    .sign(key.privateKey);
}

export class MockIdp {
  /** The keys published, in order. */
  keys: SigningKey[] = [];
  /** GET requests for the JWKS so far. */
  requests = 0;
  /** Other documents, by path. */
  readonly documents = new Map<string, unknown>();
  readonly #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(keys: SigningKey[] = []): Promise<MockIdp> {
    const server = createServer();
    const idp = new MockIdp(server);
    idp.keys = keys;
    server.on('request', (request, response) => {
      const document = request.url === undefined ? undefined : idp.documents.get(request.url);
      if (request.method === 'GET' && document !== undefined) {
        response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300' }).end(JSON.stringify(document));
        return;
      }
      if (request.method !== 'GET' || request.url !== '/jwks.json') {
        response.writeHead(404).end();
        return;
      }
      idp.requests += 1;
      const body = JSON.stringify({ keys: idp.keys.map((key) => key.jwk) });
      response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300' }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return idp;
  }

  get url(): string {
    return `${this.origin}/jwks.json`;
  }

  /** `http://127.0.0.1:<port>`. */
  get origin(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
