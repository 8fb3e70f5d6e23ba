/**
 * @keyrelay/verifier: verify JWTs with keys pushed by keyrelay.
 *
 * A {@link Verifier} opens one WatchKeys stream for a tenant (or some of its providers) and
 * holds the key sets in memory; {@link verifyWithKeySet} applies the same rules to a JWKS
 * document without a server. The rules are those of clients/conformance/README.md.
 */

export { ALGORITHMS, type Algorithm, permittedAlgorithms } from './algorithms.js';
export { ConnectError, VERIFY_ERROR_KINDS, VerifyError, type VerifyErrorKind, isVerifyError } from './errors.js';
export { HeldKey, KeySet } from './keys.js';
export { LOADER_OPTIONS, PROTO_ROOT, loadContract, serviceClient } from './proto.js';
export {
  type ConnectionState,
  type ProviderStatus,
  type TlsOptions,
  Verifier,
  type VerifierEvents,
  type VerifierOptions,
  type VerifierStatus,
  type VerifyOptions,
} from './verifier.js';
export { type Claims, DEFAULT_LEEWAY_SECONDS, type Expectations, verifyWithKeySet } from './verify.js';
