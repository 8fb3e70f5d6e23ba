/**
 * An Express app whose /me route needs a bearer token verified by keyrelay.
 *
 *   KEYRELAY_ENDPOINT=http://127.0.0.1:50051 KEYRELAY_TENANT=acme \
 *   TOKEN_ISSUER=https://acme.okta.com TOKEN_AUDIENCE=api PORT=3000 \
 *   node build/examples/express.js
 *
 *   curl -H "authorization: Bearer $TOKEN" http://127.0.0.1:3000/me
 */

import { pathToFileURL } from 'node:url';

import express, { type Express, type RequestHandler } from 'express';

import { type Claims, Verifier, VerifyError, type VerifyOptions } from '@keyrelay/verifier';

/** Verifies the request's bearer token; its claims go to `res.locals.claims`, refusals get a 401. */
export function requireToken(verifier: Verifier, expected: VerifyOptions): RequestHandler {
  return async (req, res, next) => {
    const match = /^Bearer ([A-Za-z0-9._~+/=-]+)$/i.exec(req.get('authorization') ?? '');
    if (match?.[1] === undefined) {
      res.set('WWW-Authenticate', 'Bearer').status(401).json({ error: 'missing bearer token' });
      return;
    }
    try {
      res.locals.claims = await verifier.verify(match[1], expected);
      next();
    } catch (error) {
      if (error instanceof VerifyError) {
        res
          .set('WWW-Authenticate', `Bearer error="invalid_token", error_description="${error.kind}"`)
          .status(401)
          .json({ error: error.kind });
        return;
      }
      next(error);
    }
  };
}

export function createApp(verifier: Verifier, expected: VerifyOptions): Express {
  const app = express();
  app.get('/healthz', (_req, res) => {
    const status = verifier.status();
    res.status(status.providers.length > 0 ? 200 : 503).json({ state: status.state, providers: status.providers.length });
  });
  app.get('/me', requireToken(verifier, expected), (_req, res) => {
    const claims = res.locals.claims as Claims;
    res.json({ sub: claims.sub });
  });
  return app;
}

async function main(): Promise<void> {
  const env = (name: string, fallback?: string): string => {
    const value = process.env[name] ?? fallback;
    if (value === undefined) {
      throw new Error(`set ${name}`);
    }
    return value;
  };
  const verifier = await Verifier.connect({
    endpoint: env('KEYRELAY_ENDPOINT', 'http://127.0.0.1:50051'),
    tenant: env('KEYRELAY_TENANT'),
    accessToken: process.env.KEYRELAY_ACCESS_TOKEN,
  });
  const app = createApp(verifier, { issuer: process.env.TOKEN_ISSUER, audience: process.env.TOKEN_AUDIENCE });
  const port = Number(env('PORT', '3000'));
  const server = app.listen(port, '127.0.0.1', () => console.error(`listening on http://127.0.0.1:${port}`));
  const stop = () => {
    server.close();
    verifier.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
