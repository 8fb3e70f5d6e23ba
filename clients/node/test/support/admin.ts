/** A small AdminService client for the tests, over the contract the package ships. */

import * as grpc from '@grpc/grpc-js';

import { loadContract, serviceClient } from '@keyrelay/verifier';

import type { Keyrelay } from './keyrelay.js';

export interface ProviderMessage {
  tenant: string;
  provider: string;
  status: {
    state: string;
    version: string;
    lastError: string;
    keyCount: number;
    revokedKeys: { kid: string; reason: string; revokedBy: string; publishedByProvider: boolean }[];
  } | null;
}

export interface RevokeKeyResponse {
  provider: ProviderMessage;
  alreadyRevoked: boolean;
  inKeySet: boolean;
}

export interface ReinstateKeyResponse {
  provider: ProviderMessage;
  inKeySet: boolean;
}

type Callback = (error: grpc.ServiceError | null, response: unknown) => void;
type Unary = (request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback) => void;

export class Admin {
  readonly #client: grpc.Client;
  readonly #token: string;

  constructor(server: Keyrelay, tls?: { ca: string; cert?: string; key?: string }) {
    const AdminService = serviceClient(loadContract('keyrelay/v1/admin_service.proto'), 'AdminService');
    const credentials = tls
      ? grpc.credentials.createSsl(
          Buffer.from(tls.ca),
          tls.key ? Buffer.from(tls.key) : null,
          tls.cert ? Buffer.from(tls.cert) : null,
        )
      : grpc.credentials.createInsecure();
    this.#client = new AdminService(`127.0.0.1:${server.grpcPort}`, credentials);
    this.#token = server.adminToken;
  }

  call<T>(method: string, request: object): Promise<T> {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.#token}`);
    const unary = (this.#client as unknown as Record<string, Unary>)[method];
    if (unary === undefined) {
      throw new Error(`AdminService has no ${method}`);
    }
    return new Promise((resolve, reject) => {
      unary.call(this.#client, request, metadata, { deadline: Date.now() + 20_000 }, (error, response) => {
        if (error) {
          reject(error);
        } else {
          resolve(response as T);
        }
      });
    });
  }

  /**
   * Registers `tenant/provider` at `jwksUrl`, or by `issuer` when given (then `jwksUrl` is
   * empty); resolves once the first fetch (after discovery) succeeded.
   */
  async register(tenant: string, provider: string, jwksUrl: string, issuer = ''): Promise<ProviderMessage> {
    const { provider: registered } = await this.call<{ provider: ProviderMessage }>('registerProvider', {
      tenant,
      provider,
      jwksUrl,
      issuer,
    });
    if (registered.status?.state !== 'PROVIDER_STATE_READY') {
      throw new Error(`provider ${tenant}/${provider} is not ready: ${JSON.stringify(registered.status)}`);
    }
    return registered;
  }

  /** Fetches the provider's keys now; resolves to its status afterwards. */
  async refresh(tenant: string, provider: string): Promise<ProviderMessage> {
    const { provider: refreshed } = await this.call<{ provider: ProviderMessage }>('refreshProvider', { tenant, provider });
    return refreshed;
  }

  /** Removes `tenant/provider` (AdminService.UnregisterProvider). */
  async unregister(tenant: string, provider: string): Promise<void> {
    await this.call<object>('unregisterProvider', { tenant, provider });
  }

  /** Revokes `kid` of `tenant/provider` (AdminService.RevokeKey). */
  revokeKey(tenant: string, provider: string, kid: string, reason: string): Promise<RevokeKeyResponse> {
    return this.call<RevokeKeyResponse>('revokeKey', { tenant, provider, kid, reason });
  }

  /** Serves a revoked `kid` again (AdminService.ReinstateKey). */
  reinstateKey(tenant: string, provider: string, kid: string): Promise<ReinstateKeyResponse> {
    return this.call<ReinstateKeyResponse>('reinstateKey', { tenant, provider, kid });
  }

  close(): void {
    this.#client.close();
  }
}
