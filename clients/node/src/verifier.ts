/**
 * The verifier's connection to keyrelay: one WatchKeys stream kept open in the background,
 * reconnecting with exponential backoff and full jitter and resuming from the versions held,
 * plus one shared, rate-limited `Resolve` per unknown (provider, kid).
 */

import { EventEmitter } from 'node:events';

import * as grpc from '@grpc/grpc-js';

import { ConnectError, VerifyError } from './errors.js';
import { type HeldKey, KeySet } from './keys.js';
import {
  type KeyServiceClient,
  type KeySetMessage,
  type ResolveResponse,
  type WatchKeysRequest,
  type WatchKeysResponse,
  loadContract,
  serviceClient,
  timestampToDate,
} from './proto.js';
import { type Claims, type Expectations, parseToken, verifyParsed } from './verify.js';

/** TLS settings for an `https://` endpoint (PEM text or bytes). */
export interface TlsOptions {
  /** CA certificates to trust; default: the system's roots. */
  ca?: string | Buffer | undefined;
  /** Client certificate chain to present, for a keyrelay that requires one (mutual TLS). */
  cert?: string | Buffer | undefined;
  /** Private key of `cert`. */
  key?: string | Buffer | undefined;
  /** Name to check the server certificate against, when it differs from the endpoint's host. */
  serverName?: string | undefined;
}

export interface VerifierOptions {
  /** `http://host:port`, or `https://host:port` for a TLS listener. */
  endpoint: string;
  /** The tenant whose tokens are verified. */
  tenant: string;
  /** Watch only these providers of the tenant; default: every provider, including later ones. */
  providers?: readonly string[] | undefined;
  /** TLS settings; only with an `https://` endpoint. */
  tls?: TlsOptions | undefined;
  /** A verifier (or admin) access token, sent as `authorization: Bearer <token>`. */
  accessToken?: string | undefined;
  /** How long `connect` waits for the first complete view of the key sets (default 10 000 ms). */
  firstSyncTimeoutMs?: number | undefined;
  /** Reconnect backoff: the first delay bound (100 ms), doubled per failure up to the max (10 s). */
  reconnect?: { initialDelayMs?: number | undefined; maxDelayMs?: number | undefined } | undefined;
  /** Unknown kids: at most one Resolve per (provider, kid) per `cooldownMs` (1000), at most
   * `perProviderPerSecond` (5, bursts of twice that) per provider, each within `timeoutMs` (10 000). */
  resolve?:
    | { cooldownMs?: number | undefined; perProviderPerSecond?: number | undefined; timeoutMs?: number | undefined }
    | undefined;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions | undefined;
}

/** {@link Expectations}, plus the provider whose keys may verify the token. */
export interface VerifyOptions extends Expectations {
  /** Only keys of this provider may verify the token; default: any watched provider. */
  provider?: string | undefined;
}

/** `connecting` until the first `synced`; `connected` while the stream is up and synced. */
export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** One provider's key set as held. */
export interface ProviderStatus {
  provider: string;
  /** keyrelay's version of the set. */
  version: number;
  kids: string[];
  /** When the identity provider last confirmed these keys. */
  fetchedAt: Date | undefined;
  /** Milliseconds since `fetchedAt`. */
  ageMs: number | undefined;
  /** Until when keyrelay considered them fresh when it sent them. */
  freshUntil: Date | undefined;
  /** After this instant keyrelay stops serving them. */
  usableUntil: Date | undefined;
  /** Whether keyrelay reported them stale. */
  stale: boolean;
  /** keyrelay's state of the provider when the set was sent: READY, STALE or FAILING. */
  state: string;
  /** Key ids a keyrelay administrator revoked (never in `kids`): a token naming one is
   * refused as `revoked`, without a Resolve. */
  revokedKids: string[];
  /** The issuer whose tokens these keys verify, for a provider registered by issuer; empty for
   * one registered by JWKS URL (its keys verify a token of any `iss`). */
  issuer: string;
  /** When this verifier received the set. */
  receivedAt: Date;
}

export interface VerifierStatus {
  state: ConnectionState;
  /** Whether the stream is up and synced. */
  connected: boolean;
  /** When the stream last reached `synced`. */
  lastSyncedAt: Date | undefined;
  /** Why the stream was last lost. */
  lastError: string | undefined;
  /** The key sets held, by provider name. */
  providers: ProviderStatus[];
}

/** Events a {@link Verifier} emits (all informational; none needs a listener). */
export interface VerifierEvents {
  /** A key set arrived on the stream (`source: 'watch'`) or from a Resolve. */
  keySet: [{ provider: string; version: number; source: 'watch' | 'resolve' }];
  removed: [{ provider: string; version: number }];
  /** The stream sent its `synced`: the initial state is complete. */
  connected: [];
  /** The stream ended; `retryInMs` is the jittered delay before the next attempt. */
  disconnected: [{ code: number; details: string; retryInMs: number }];
  /** A Resolve for an unknown kid completed; `code` is its gRPC status (0 for OK). */
  resolve: [{ provider: string; kid: string; code: number; found: boolean }];
  /** Something was ignored (a key set that does not parse, say). */
  warning: [string];
}

interface Held {
  provider: string;
  version: number;
  keys: KeySet;
  /** The kids the set lists as revoked by a keyrelay administrator, in its order. */
  revoked: ReadonlySet<string>;
  message: KeySetMessage;
  receivedAt: Date;
}

interface ResolveSlot {
  at: number;
  inflight: Promise<void> | undefined;
}

const RETRY_ON_CONNECT = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);
const MAX_RESOLVE_SLOTS = 10_000;

let keyServiceConstructor: grpc.ServiceClientConstructor | undefined;

function keyService(): grpc.ServiceClientConstructor {
  keyServiceConstructor ??= serviceClient(loadContract('keyrelay/v1/key_service.proto'), 'KeyService');
  return keyServiceConstructor;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isFinite(result) || result <= 0) {
    throw new TypeError(`${name} must be a positive number, not ${String(value)}`);
  }
  return result;
}

/** The gRPC target and channel credentials of `endpoint`. */
function channelOf(endpoint: string, tls: TlsOptions | undefined): { target: string; credentials: grpc.ChannelCredentials } {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new TypeError(`endpoint must be http://host:port or https://host:port, not ${JSON.stringify(endpoint)}`);
  }
  const https = url.protocol === 'https:';
  if ((!https && url.protocol !== 'http:') || (url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
    throw new TypeError(`endpoint must be http://host:port or https://host:port, not ${JSON.stringify(endpoint)}`);
  }
  const target = `${url.hostname}:${url.port || (https ? '443' : '80')}`;
  if (!https) {
    if (tls !== undefined) {
      throw new TypeError(`TLS settings need an https:// endpoint, not ${endpoint}`);
    }
    return { target, credentials: grpc.credentials.createInsecure() };
  }
  if ((tls?.cert === undefined) !== (tls?.key === undefined)) {
    throw new TypeError('tls.cert and tls.key go together');
  }
  const pem = (value: string | Buffer | undefined) => (value === undefined ? null : Buffer.from(value));
  return { target, credentials: grpc.credentials.createSsl(pem(tls?.ca), pem(tls?.key), pem(tls?.cert)) };
}

/**
 * Verifies tokens with the keys keyrelay pushes. Create one with {@link Verifier.connect} and
 * share it; {@link Verifier.close} ends the stream.
 */
export class Verifier extends EventEmitter<VerifierEvents> {
  readonly tenant: string;
  readonly #providers: readonly string[];
  readonly #client: KeyServiceClient;
  readonly #authorization: string | undefined;
  readonly #initialDelay: number;
  readonly #maxDelay: number;
  readonly #cooldown: number;
  readonly #resolveRate: number;
  readonly #resolveTimeout: number;
  readonly #sets = new Map<string, Held>();
  /** Every held kid's keys with their provider's issuer, in provider name order; made again on the first lookup after a change. */
  #byKid: Map<string, { issuer: string; key: HeldKey }[]> | undefined;
  readonly #resolving = new Map<string, ResolveSlot>();
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  #state: ConnectionState = 'connecting';
  #call: grpc.ClientReadableStream<WatchKeysResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #retryDelay: number;
  #lastSyncedAt: Date | undefined;
  #lastError: string | undefined;
  #firstSync: { resolve: () => void; reject: (error: ConnectError) => void } | undefined;

  private constructor(options: VerifierOptions) {
    super();
    if (typeof options.tenant !== 'string' || options.tenant === '') {
      throw new TypeError('tenant is required');
    }
    this.tenant = options.tenant;
    this.#providers = [...(options.providers ?? [])];
    this.#initialDelay = positive(options.reconnect?.initialDelayMs, 100, 'reconnect.initialDelayMs');
    this.#maxDelay = Math.max(this.#initialDelay, positive(options.reconnect?.maxDelayMs, 10_000, 'reconnect.maxDelayMs'));
    this.#retryDelay = this.#initialDelay;
    this.#cooldown = positive(options.resolve?.cooldownMs, 1000, 'resolve.cooldownMs');
    this.#resolveRate = positive(options.resolve?.perProviderPerSecond, 5, 'resolve.perProviderPerSecond');
    this.#resolveTimeout = positive(options.resolve?.timeoutMs, 10_000, 'resolve.timeoutMs');
    if (options.accessToken !== undefined) {
      if (!/^[\x21-\x7e]+$/.test(options.accessToken)) {
        throw new TypeError('the access token has characters that cannot be sent as gRPC metadata');
      }
      this.#authorization = `Bearer ${options.accessToken}`;
    }
    const { target, credentials } = channelOf(options.endpoint, options.tls);
    const channelOptions: grpc.ChannelOptions = {
      // The channel's own reconnects follow the stream's backoff, so a restarted keyrelay is
      // reached within one delay bound.
      'grpc.initial_reconnect_backoff_ms': this.#initialDelay,
      'grpc.max_reconnect_backoff_ms': this.#maxDelay,
      'grpc.keepalive_time_ms': 60_000,
      'grpc.keepalive_timeout_ms': 20_000,
      ...(options.tls?.serverName === undefined ? {} : { 'grpc.ssl_target_name_override': options.tls.serverName }),
      ...options.channelOptions,
    };
    const KeyService = keyService();
    this.#client = new KeyService(target, credentials, channelOptions) as unknown as KeyServiceClient;
  }

  /**
   * Opens the WatchKeys stream and resolves once the first complete view of the selected key
   * sets has arrived. Rejects with a {@link ConnectError} when none arrives within
   * `firstSyncTimeoutMs`, or at once when keyrelay refuses the request or the credentials.
   */
  static async connect(options: VerifierOptions): Promise<Verifier> {
    const timeout = positive(options.firstSyncTimeoutMs, 10_000, 'firstSyncTimeoutMs');
    const verifier = new Verifier(options);
    const synced = new Promise<void>((resolve, reject) => {
      verifier.#firstSync = { resolve, reject };
    });
    const timer = setTimeout(() => {
      verifier.#firstSync?.reject(
        new ConnectError(
          `no key sets from keyrelay within ${timeout} ms${verifier.#lastError ? ` (last error: ${verifier.#lastError})` : ''}`,
        ),
      );
    }, timeout);
    verifier.#open();
    try {
      await synced;
      return verifier;
    } catch (error) {
      verifier.close();
      throw error;
    } finally {
      clearTimeout(timer);
      verifier.#firstSync = undefined;
    }
  }

  /**
   * Verifies `token` and resolves to its claims, or rejects with a {@link VerifyError} whose
   * `kind` says why. A kid no held key has is refused as `revoked` when a held set lists it as
   * revoked by a keyrelay administrator; any other triggers one Resolve per provider, shared by
   * every concurrent caller.
   */
  async verify(token: string, expected: VerifyOptions = {}): Promise<Claims> {
    if (this.#state === 'closed') {
      throw new Error('the verifier is closed');
    }
    const parsed = parseToken(token);
    const key = await this.#keyFor(parsed.kid, expected.provider, parsed.payload.iss);
    return verifyParsed(parsed, key, expected);
  }

  /** Whether the stream is up, and the key sets held with their versions and age. */
  status(): VerifierStatus {
    const now = Date.now();
    const providers = [...this.#sets.values()]
      .sort((a, b) => (a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : 0))
      .map((held): ProviderStatus => {
        const fetchedAt = timestampToDate(held.message.fetchedAt);
        return {
          provider: held.provider,
          version: held.version,
          kids: held.keys.kids(),
          fetchedAt,
          ageMs: fetchedAt === undefined ? undefined : now - fetchedAt.getTime(),
          freshUntil: timestampToDate(held.message.freshUntil),
          usableUntil: timestampToDate(held.message.usableUntil),
          stale: held.message.stale,
          state: held.message.state.replace(/^PROVIDER_STATE_/, ''),
          revokedKids: [...held.revoked],
          issuer: held.message.issuer,
          receivedAt: held.receivedAt,
        };
      });
    return {
      state: this.#state,
      connected: this.#state === 'connected',
      lastSyncedAt: this.#lastSyncedAt,
      lastError: this.#lastError,
      providers,
    };
  }

  /** Ends the stream and releases the channel. Verification stops; `verify` then throws. */
  close(): void {
    if (this.#state === 'closed') {
      return;
    }
    this.#state = 'closed';
    clearTimeout(this.#timer);
    const call = this.#call;
    this.#call = undefined;
    call?.cancel();
    this.#client.close();
  }

  #metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.#authorization !== undefined) {
      metadata.set('authorization', this.#authorization);
    }
    return metadata;
  }

  #request(): WatchKeysRequest {
    const selectors =
      this.#providers.length === 0
        ? [{ tenant: this.tenant, provider: '' }]
        : this.#providers.map((provider) => ({ tenant: this.tenant, provider }));
    const knownVersions = [...this.#sets.values()].map((held) => ({
      tenant: this.tenant,
      provider: held.provider,
      version: String(held.version),
    }));
    return { selectors, knownVersions };
  }

  /** Opens one stream; when it ends, schedules the next after a jittered backoff. */
  #open(): void {
    if (this.#state === 'closed') {
      return;
    }
    const call = this.#client.watchKeys(this.#request(), this.#metadata());
    this.#call = call;
    let synced = false;
    call.on('data', (message: WatchKeysResponse) => {
      if (this.#call !== call) {
        return;
      }
      if (message.event === 'synced') {
        synced = true;
      }
      this.#onEvent(message);
    });
    // grpc-js reports the outcome of every call once, as 'status'; 'error' only duplicates it
    // for failures but must be listened to.
    call.on('error', () => undefined);
    call.on('status', (status: grpc.StatusObject) => {
      if (this.#call !== call) {
        return;
      }
      this.#call = undefined;
      this.#lost(status, synced);
    });
  }

  #lost(status: grpc.StatusObject, synced: boolean): void {
    this.#lastError =
      status.code === grpc.status.OK ? 'keyrelay ended the stream' : `${grpc.status[status.code] ?? status.code}: ${status.details}`;
    if (this.#firstSync !== undefined && RETRY_ON_CONNECT.has(status.code)) {
      this.#firstSync.reject(new ConnectError(`keyrelay refused the key stream: ${this.#lastError}`, status.code));
      return;
    }
    if (this.#state !== 'connecting') {
      this.#state = 'disconnected';
    }
    if (synced) {
      this.#retryDelay = this.#initialDelay;
    }
    // Full jitter: anywhere between zero and the current bound, which then doubles.
    const delay = Math.random() * this.#retryDelay;
    this.#retryDelay = Math.min(this.#retryDelay * 2, this.#maxDelay);
    this.emit('disconnected', { code: status.code, details: status.details, retryInMs: delay });
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  #onEvent(message: WatchKeysResponse): void {
    switch (message.event) {
      case 'keySet':
        if (message.keySet) {
          this.#hold(message.keySet, 'watch');
        }
        break;
      case 'removed':
        if (message.removed) {
          this.#sets.delete(message.removed.provider);
          this.#byKid = undefined;
          this.emit('removed', { provider: message.removed.provider, version: Number(message.removed.version) });
        }
        break;
      case 'synced':
        this.#state = 'connected';
        this.#lastSyncedAt = new Date();
        this.#firstSync?.resolve();
        this.emit('connected');
        break;
      default:
        this.emit('warning', `ignoring a WatchKeys event this SDK does not know (${String(message.event)})`);
    }
  }

  /** Keeps a received set unless a newer version is already held. */
  #hold(message: KeySetMessage, source: 'watch' | 'resolve'): void {
    if (message.tenant !== this.tenant || !this.#selects(message.provider)) {
      this.emit('warning', `ignoring a key set of ${message.tenant}/${message.provider}, which is not watched`);
      return;
    }
    const version = Number(message.version);
    const held = this.#sets.get(message.provider);
    if (held !== undefined && held.version > version) {
      return;
    }
    let keys: KeySet;
    try {
      keys = KeySet.parse(message.jwksJson);
    } catch (error) {
      this.emit('warning', `ignoring a key set of ${message.provider} that does not parse: ${String(error)}`);
      return;
    }
    const revoked = new Set(message.revokedKids);
    this.#sets.set(message.provider, { provider: message.provider, version, keys, revoked, message, receivedAt: new Date() });
    this.#byKid = undefined;
    this.emit('keySet', { provider: message.provider, version, source });
  }

  /** The providers a token may be verified by. */
  #candidates(provider: string | undefined): string[] {
    if (provider !== undefined) {
      return this.#selects(provider) ? [provider] : [];
    }
    return [...new Set([...this.#providers, ...this.#sets.keys()])].sort();
  }

  /** Whether the stream's selection includes `provider`. */
  #selects(provider: string): boolean {
    return this.#providers.length === 0 || this.#providers.includes(provider);
  }

  /**
   * The key with `kid` among `providers`, in order, for a token whose `iss` is `iss`: a
   * provider registered by issuer verifies only that issuer's tokens.
   */
  #find(kid: string, providers: readonly string[], iss: unknown): HeldKey | undefined {
    for (const provider of providers) {
      const held = this.#sets.get(provider);
      const key = held?.keys.find(kid);
      if (held !== undefined && key !== undefined) {
        if (held.message.issuer !== '' && held.message.issuer !== iss) {
          throw new VerifyError('issuer', `${this.tenant}/${provider} verifies tokens of ${JSON.stringify(held.message.issuer)} only`);
        }
        return key;
      }
    }
    return undefined;
  }

  /**
   * The key with `kid` in any held set for a token whose `iss` is `iss`: a provider registered
   * by that issuer first, then one registered by URL, each in name order. A provider of another
   * issuer never verifies it.
   */
  #heldAnywhere(kid: string, iss: unknown): HeldKey | undefined {
    if (this.#byKid === undefined) {
      const byKid = new Map<string, { issuer: string; key: HeldKey }[]>();
      for (const provider of [...this.#sets.keys()].sort()) {
        const held = this.#sets.get(provider);
        for (const key of held?.keys.keys ?? []) {
          if (held !== undefined && key.kid !== undefined) {
            const entries = byKid.get(key.kid) ?? [];
            entries.push({ issuer: held.message.issuer, key });
            byKid.set(key.kid, entries);
          }
        }
      }
      this.#byKid = byKid;
    }
    const held = this.#byKid.get(kid);
    if (held === undefined) {
      return undefined;
    }
    const found =
      held.find((entry) => entry.issuer !== '' && entry.issuer === iss) ?? held.find((entry) => entry.issuer === '');
    if (found === undefined) {
      throw new VerifyError('issuer', `only providers of ${JSON.stringify(held[0]?.issuer)} hold kid ${JSON.stringify(kid)}, not of ${JSON.stringify(iss)}`);
    }
    return found.key;
  }

  #lookup(kid: string, provider: string | undefined, iss: unknown): HeldKey | undefined {
    return provider === undefined ? this.#heldAnywhere(kid, iss) : this.#find(kid, this.#candidates(provider), iss);
  }

  async #keyFor(kid: string, provider: string | undefined, iss: unknown): Promise<HeldKey> {
    const found = this.#lookup(kid, provider, iss);
    if (found !== undefined) {
      return found;
    }
    const providers = this.#candidates(provider);
    // Rule 2: a kid no held key has but a held set lists as revoked is refused at once.
    const revokedBy = providers.find((name) => this.#sets.get(name)?.revoked.has(kid));
    if (revokedBy !== undefined) {
      throw new VerifyError(
        'revoked',
        `kid ${JSON.stringify(kid)} of ${this.tenant}/${revokedBy} was revoked by a keyrelay administrator`,
      );
    }
    await Promise.all(providers.map((name) => this.#resolveKid(name, kid)));
    const resolved = this.#lookup(kid, provider, iss);
    if (resolved === undefined) {
      const scope = provider === undefined ? `tenant ${this.tenant}` : `${this.tenant}/${provider}`;
      throw new VerifyError('unknown_kid', `no key with kid ${JSON.stringify(kid)} for ${scope}`);
    }
    return resolved;
  }

  /**
   * Asks keyrelay for `provider`'s set with `kid`: once for every concurrent caller, at most
   * once per cooldown per kid, and within the provider's rate.
   */
  #resolveKid(provider: string, kid: string): Promise<void> {
    const id = `${provider}\u0000${kid}`;
    const now = Date.now();
    const slot = this.#resolving.get(id);
    if (slot?.inflight !== undefined) {
      return slot.inflight;
    }
    if (slot !== undefined && now - slot.at < this.#cooldown) {
      return Promise.resolve();
    }
    if (!this.#takeToken(provider, now)) {
      return Promise.resolve();
    }
    this.#prune(now);
    const entry: ResolveSlot = { at: now, inflight: undefined };
    entry.inflight = this.#resolve(provider, kid).finally(() => {
      entry.inflight = undefined;
    });
    this.#resolving.set(id, entry);
    return entry.inflight;
  }

  #takeToken(provider: string, now: number): boolean {
    const burst = 2 * this.#resolveRate;
    const bucket = this.#buckets.get(provider) ?? { tokens: burst, at: now };
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * this.#resolveRate);
    bucket.at = now;
    this.#buckets.set(provider, bucket);
    if (bucket.tokens < 1) {
      return false;
    }
    bucket.tokens -= 1;
    return true;
  }

  #prune(now: number): void {
    if (this.#resolving.size < MAX_RESOLVE_SLOTS) {
      return;
    }
    for (const [id, slot] of this.#resolving) {
      if (slot.inflight === undefined && now - slot.at >= this.#cooldown) {
        this.#resolving.delete(id);
      }
    }
  }

  #resolve(provider: string, kid: string): Promise<void> {
    return new Promise((resolve) => {
      if (this.#state === 'closed') {
        resolve();
        return;
      }
      const deadline = new Date(Date.now() + this.#resolveTimeout);
      this.#client.resolve({ tenant: this.tenant, provider, kid }, this.#metadata(), { deadline }, (error, response?: ResolveResponse) => {
        if (error === null && response?.result === 'keySet' && response.keySet) {
          this.#hold(response.keySet, 'resolve');
        }
        const found = this.#sets.get(provider)?.keys.find(kid) !== undefined;
        this.emit('resolve', { provider, kid, code: error?.code ?? grpc.status.OK, found });
        resolve();
      });
    });
  }
}
