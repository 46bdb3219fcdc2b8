//! Bearer-token gate. CONTRACT STUB: the config helper replaces the bodies, keeping the API.

use crate::secrets::Secret;

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), if any.
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    authorization.strip_prefix(b"Bearer ")
}

/// Constant-time check of `presented` against every token (no early exit on a match).
pub fn token_matches(presented: &[u8], tokens: &[Secret]) -> bool {
    tokens.iter().any(|t| t.expose().as_bytes() == presented)
}
