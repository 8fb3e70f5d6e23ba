/**
 * The keyrelay.v1 contract, loaded at run time by @grpc/proto-loader from the .proto files this
 * package ships (proto/, copied from the repository's proto/keyrelay/v1 at build time), with
 * TypeScript shapes of the messages the SDK uses. Loader options: camelCase fields, 64-bit
 * integers as decimal strings, enums as their names, defaults filled in, oneof names set.
 */

import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The folder holding keyrelay/v1/*.proto. */
export const PROTO_ROOT = fileURLToPath(new URL('../proto', import.meta.url));

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

/** Loads one file of the contract (`keyrelay/v1/key_service.proto`, say) as a gRPC package. */
export function loadContract(file: string): grpc.GrpcObject {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER_OPTIONS));
}

/** The gRPC client constructor of `keyrelay.v1.<service>` in `contract`. */
export function serviceClient(contract: grpc.GrpcObject, service: string): grpc.ServiceClientConstructor {
  const v1 = (contract.keyrelay as grpc.GrpcObject | undefined)?.v1 as grpc.GrpcObject | undefined;
  const constructor = v1?.[service];
  if (typeof constructor !== 'function') {
    throw new Error(`keyrelay.v1.${service} is not in the contract`);
  }
  return constructor as grpc.ServiceClientConstructor;
}

export interface Timestamp {
  seconds: string;
  nanos: number;
}

export function timestampToDate(timestamp: Timestamp | null | undefined): Date | undefined {
  if (timestamp === null || timestamp === undefined) {
    return undefined;
  }
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6));
}

export interface KeySetMessage {
  tenant: string;
  provider: string;
  version: string;
  jwksJson: Buffer;
  keys: { kid: string; kty: string; alg: string; use: string; jwkJson: Buffer }[];
  fetchedAt: Timestamp | null;
  freshUntil: Timestamp | null;
  stale: boolean;
  usableUntil: Timestamp | null;
  state: string;
  /** Key ids a keyrelay administrator revoked (AdminService.RevokeKey): never in `keys`. */
  revokedKids: string[];
  /** The issuer whose tokens these keys verify; empty for a provider registered by JWKS URL. */
  issuer: string;
}

export interface WatchKeysRequest {
  selectors: { tenant: string; provider: string }[];
  knownVersions: { tenant: string; provider: string; version: string }[];
}

export interface WatchKeysResponse {
  event?: 'keySet' | 'removed' | 'synced';
  keySet?: KeySetMessage | null;
  removed?: { tenant: string; provider: string; version: string } | null;
  synced?: Record<string, never> | null;
}

export interface ResolveRequest {
  tenant: string;
  provider: string;
  kid?: string;
  ifNewerThanVersion?: string;
}

export interface ResolveResponse {
  result?: 'keySet' | 'notModified';
  keySet?: KeySetMessage | null;
  notModified?: boolean;
}

/** The KeyService methods the verifier calls. */
export interface KeyServiceClient extends grpc.Client {
  watchKeys(request: WatchKeysRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<WatchKeysResponse>;
  resolve(
    request: ResolveRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: ResolveResponse) => void,
  ): grpc.ClientUnaryCall;
}
