//! Bearer-token gate (SPEC.md §3, PITFALLS.md item 20).
//!
//! Owns: parsing an `Authorization` value and the constant-time comparison against the
//! configured tokens. It never logs and never returns which token matched.

use subtle::{Choice, ConstantTimeEq};

use crate::secrets::Secret;

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), if any.
///
/// The scheme is followed by one or more spaces; surrounding whitespace is not part of the
/// token (header values may carry optional whitespace). An empty token is no token.
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let value = trim_ows_start(authorization);
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = trim_ows_end(trim_ows_start(rest));
    if token.is_empty() {
        None
    } else {
        Some(token)
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows_start(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    s
}

fn trim_ows_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Constant-time check of `presented` against every token (no early exit on a match).
///
/// `subtle`'s slice comparison returns early on a length mismatch: a token's length is not
/// secret, its content is. Every token is compared and the results are OR-ed, so timing does
/// not reveal which token (or whether an early one) matched.
pub fn token_matches(presented: &[u8], tokens: &[Secret]) -> bool {
    let mut any = Choice::from(0u8);
    for token in tokens {
        any |= token.expose().as_bytes().ct_eq(presented);
    }
    any.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|t| Secret::new((*t).to_string())).collect()
    }

    #[test]
    fn bearer_scheme_yields_token() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"bEaReR abc"), Some(&b"abc"[..]));
    }

    #[test]
    fn several_spaces_after_scheme_are_allowed() {
        assert_eq!(bearer_token(b"Bearer    abc"), Some(&b"abc"[..]));
    }

    #[test]
    fn trailing_whitespace_is_trimmed() {
        assert_eq!(bearer_token(b"Bearer abc \t "), Some(&b"abc"[..]));
    }

    #[test]
    fn empty_token_is_none() {
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer    "), None);
    }

    #[test]
    fn scheme_without_space_is_none() {
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
    }

    #[test]
    fn other_scheme_is_none() {
        assert_eq!(bearer_token(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
    }

    #[test]
    fn tab_is_not_the_scheme_separator() {
        assert_eq!(bearer_token(b"Bearer\tabc"), None);
    }

    #[test]
    fn short_value_is_none() {
        assert_eq!(bearer_token(b"Bear"), None);
        assert_eq!(bearer_token(b""), None);
    }

    #[test]
    fn non_ascii_value_is_none_not_a_panic() {
        assert_eq!(bearer_token("Béarer abc".as_bytes()), None);
    }

    #[test]
    fn token_matches_any_configured_token() {
        let t = tokens(&["one", "two", "three"]);
        assert!(token_matches(b"one", &t));
        assert!(token_matches(b"three", &t));
    }

    #[test]
    fn wrong_token_does_not_match() {
        assert!(!token_matches(b"four", &tokens(&["one", "two"])));
    }

    #[test]
    fn prefix_of_token_does_not_match() {
        assert!(!token_matches(b"on", &tokens(&["one"])));
    }

    #[test]
    fn no_tokens_match_nothing() {
        assert!(!token_matches(b"one", &[]));
    }

    #[test]
    fn token_comparison_is_case_sensitive() {
        assert!(!token_matches(b"ONE", &tokens(&["one"])));
    }
}
