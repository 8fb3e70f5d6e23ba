//! Access control: access tokens (kept as digests), who a caller is and what they may
//! touch, per-tenant verifier authentication, the audit log's records, the in-memory
//! registry every call is checked against, and failed authentications (counted, logged,
//! limited).

pub mod admin_token;
mod audit;
mod principal;
mod registry;
mod token;

pub use audit::{Action, AuditEvent, AuditRecord, Origin};
pub use principal::Principal;
pub use registry::{AccessChange, AccessRegistry, AccessState, AuthError, TenantAccess};
pub use token::{
    GeneratedToken, Role, SecretDigest, TokenId, TokenRecord, parse_description, split_bearer,
};
