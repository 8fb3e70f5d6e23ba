//! Access control: access tokens (kept as digests), who a caller is and what they may
//! touch, per-tenant verifier authentication, the audit log's records, and the in-memory
//! registry every call is checked against.

mod audit;
mod control;
mod principal;
mod registry;
mod token;

pub use audit::{Action, AuditEvent, AuditRecord, Origin};
pub use control::{AccessControl, TokenRequest, ensure_administers, visible_filter};
pub use principal::Principal;
pub use registry::{AccessChange, AccessRegistry, AccessState, AuthError, TenantAccess};
pub use token::{
    GeneratedToken, Role, SecretDigest, TokenId, TokenRecord, parse_description, split_bearer,
};
