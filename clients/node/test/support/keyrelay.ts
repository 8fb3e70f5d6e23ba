/**
 * A real keyrelay server for the tests: the binary from KEYRELAY_BIN (default
 * target/debug/keyrelay of this repository), on free loopback ports,
 * the embedded SQLite store in a temporary directory, a known admin token.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { waitFor } from './wait.js';

/** The repository root (clients/node/build/test/support -> ../../../../..). */
export const REPO_ROOT = resolve(fileURLToPath(new URL('../../../../..', import.meta.url)));

export function keyrelayBinary(): string {
  const binary = process.env.KEYRELAY_BIN || join(REPO_ROOT, 'target', 'debug', 'keyrelay');
  if (!existsSync(binary)) {
    throw new Error(`keyrelay binary not found at ${binary} (set KEYRELAY_BIN)`);
  }
  return binary;
}

/** A TCP port free on 127.0.0.1 at the time of asking. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address === null || typeof address === 'string') {
          reject(new Error('no port'));
        } else {
          resolvePort(address.port);
        }
      });
    });
  });
}

export interface TlsFiles {
  /** Paths of the PEM files keyrelay reads. */
  cert: string;
  key: string;
  clientCa?: string;
}

export interface KeyrelayOptions {
  tls?: TlsFiles;
  /** Extra `serve` flags. */
  args?: string[];
}

export class Keyrelay {
  readonly adminToken = `test-admin-${Math.random().toString(36).slice(2)}`;
  readonly dataDir: string;
  #process: ChildProcess | undefined;
  #exited: Promise<void> | undefined;
  #log = '';

  private constructor(
    readonly grpcPort: number,
    readonly httpPort: number,
    readonly options: KeyrelayOptions,
  ) {
    this.dataDir = mkdtempSync(join(tmpdir(), 'keyrelay-node-test-'));
  }

  /** Starts a server and waits until /readyz answers 200. */
  static async start(options: KeyrelayOptions = {}): Promise<Keyrelay> {
    const server = new Keyrelay(await freePort(), await freePort(), options);
    await server.restart();
    return server;
  }

  /** `http://127.0.0.1:<grpc port>`, or `https://` with TLS. */
  get endpoint(): string {
    return `${this.options.tls ? 'https' : 'http'}://127.0.0.1:${this.grpcPort}`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  /** Everything the server logged so far (for failure messages). */
  get log(): string {
    return this.#log;
  }

  get running(): boolean {
    return this.#process !== undefined;
  }

  /** Starts the server (again) on the same ports and data directory. */
  async restart(): Promise<void> {
    if (this.#process !== undefined) {
      throw new Error('keyrelay is already running');
    }
    const args = [
      'serve',
      '--listen',
      `127.0.0.1:${this.grpcPort}`,
      '--http-listen',
      `127.0.0.1:${this.httpPort}`,
      '--data-dir',
      this.dataDir,
      '--admin-token',
      this.adminToken,
      '--dev-allow-http-loopback',
      '--shutdown-grace',
      '1s',
    ];
    const tls = this.options.tls;
    if (tls) {
      args.push('--tls-cert', tls.cert, '--tls-key', tls.key);
      if (tls.clientCa) {
        args.push('--tls-client-ca', tls.clientCa);
      }
    }
    args.push(...(this.options.args ?? []));
    const child = spawn(keyrelayBinary(), args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' },
    });
    const append = (chunk: Buffer) => {
      this.#log += chunk.toString();
    };
    child.stdout?.on('data', append);
    child.stderr?.on('data', append);
    let exitedEarly = false;
    this.#exited = new Promise((resolveExit) => {
      child.once('exit', () => {
        exitedEarly = true;
        this.#process = undefined;
        resolveExit();
      });
    });
    this.#process = child;
    await waitFor(
      async () => {
        if (exitedEarly) {
          throw new Error(`keyrelay exited at start:\n${this.#log}`);
        }
        try {
          const response = await fetch(`${this.httpUrl}/readyz`);
          await response.arrayBuffer();
          return response.status === 200;
        } catch {
          return false;
        }
      },
      { what: 'keyrelay /readyz', timeoutMs: 30_000 },
    );
  }

  /** Stops the server gracefully (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.#process;
    if (child === undefined) {
      return;
    }
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.#exited;
    clearTimeout(killer);
  }

  /** Stops the server and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async metrics(): Promise<string> {
    const response = await fetch(`${this.httpUrl}/metrics`);
    if (response.status !== 200) {
      throw new Error(`GET /metrics answered ${response.status}`);
    }
    return response.text();
  }

  /**
   * The sum of every sample of `name` whose labels include `labels`, e.g.
   * `counter('keyrelay_rpc_requests_total', { method: 'keyrelay.v1.KeyService/Resolve' })`.
   */
  async counter(name: string, labels: Record<string, string> = {}): Promise<number> {
    let sum = 0;
    for (const line of (await this.metrics()).split('\n')) {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (match === null || match[1] !== name) {
        continue;
      }
      const sample = Object.fromEntries(
        [...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
      );
      if (Object.entries(labels).every(([label, value]) => sample[label] === value)) {
        sum += Number(match[3]);
      }
    }
    return sum;
  }
}
