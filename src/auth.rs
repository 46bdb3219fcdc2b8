//! Bearer-token gate (SPEC.md §3, PITFALLS.md item 20).
//!
//! Owns: parsing an `Authorization` value, the constant-time lookup of the presented token
//! among the configured ones, and the model-name globs that scope a token. It never logs a
//! token; the index of the matching token is computed without branching on which one matched.

use std::borrow::Cow;

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

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

/// The token a request presents in its `Authorization` value: a bearer token, or with
/// `allow_basic` (the status page) the password of Basic authentication.
pub fn presented_token(authorization: Option<&[u8]>, allow_basic: bool) -> Option<Cow<'_, [u8]>> {
    let value = authorization?;
    if let Some(token) = bearer_token(value) {
        return Some(Cow::Borrowed(token));
    }
    allow_basic
        .then(|| basic_password(value))
        .flatten()
        .map(Cow::Owned)
}

/// The password of an `Authorization: Basic <base64(user:password)>` value (scheme
/// case-insensitive), if any: the bytes after the first `:`. Used only by the status page,
/// whose browser users cannot send a bearer header but can answer a Basic prompt with the
/// token as password. An empty password is no password. Standard base64, padding optional.
pub fn basic_password(authorization: &[u8]) -> Option<Vec<u8>> {
    let value = trim_ows_start(authorization);
    let (scheme, rest) = value.split_at_checked(5)?;
    if !scheme.eq_ignore_ascii_case(b"Basic") || rest.first() != Some(&b' ') {
        return None;
    }
    let decoded = base64_decode(trim_ows_end(trim_ows_start(rest)))?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded.get(colon + 1..)?;
    (!password.is_empty()).then(|| password.to_vec())
}

/// RFC 4648 base64 (standard alphabet); `=` padding optional, anything else refused.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in group.iter().enumerate() {
            bits |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
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
    find_token(presented, tokens).is_some()
}

/// The index of the token equal to `presented`, found in constant time: every token is
/// compared and the index is picked with a conditional select, so neither the timing nor a
/// branch depends on which token (or whether an early one) matched. The index is what the
/// caller needs for the token's scope and rate limit. Duplicate tokens are refused by the
/// config; were there any, the last one would win.
pub fn find_token(presented: &[u8], tokens: &[Secret]) -> Option<usize> {
    let mut any = Choice::from(0u8);
    let mut index = 0u64;
    for (i, token) in tokens.iter().enumerate() {
        let eq = token.expose().as_bytes().ct_eq(presented);
        index = u64::conditional_select(&index, &(i as u64), eq);
        any |= eq;
    }
    if bool::from(any) {
        usize::try_from(index).ok()
    } else {
        None
    }
}

/// True when `name` matches the glob `pattern`: `*` matches any run of characters (`/`
/// included), `?` exactly one character, everything else itself (case-sensitive, like model
/// routing). No escapes: model names with a literal `*` are matched by `*` or `?`.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    // Byte offsets into both; characters are decoded in place (no allocation per request).
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen (pattern offset after it) and the name offset it swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = name.get(ni..).and_then(|rest| rest.chars().next()) {
        match pattern.get(pi..).and_then(|rest| rest.chars().next()) {
            Some('*') => {
                pi += 1;
                star = Some((pi, ni));
            }
            Some(p) if p == '?' || p == c => {
                pi += p.len_utf8();
                ni += c.len_utf8();
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry after it.
                Some((after_star, swallowed)) => {
                    let next = name
                        .get(swallowed..)
                        .and_then(|rest| rest.chars().next())
                        .map_or(1, char::len_utf8);
                    star = Some((after_star, swallowed + next));
                    pi = after_star;
                    ni = swallowed + next;
                }
                None => return false,
            },
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.bytes().all(|b| b == b'*'))
}

/// Which models a token may use: every model (a plain string entry), or those whose name
/// or alias matches one of the globs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    Models(Vec<String>),
}

impl Scope {
    /// True when any of `names` (a route's name and its aliases) is in scope.
    pub fn allows<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Models(globs) => names.any(|n| globs.iter().any(|g| glob_matches(g, n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_gives_the_password_after_the_first_colon() {
        // "status:s3cr:et" and "Aladdin:open sesame" (RFC 7617).
        assert_eq!(
            basic_password(b"Basic c3RhdHVzOnMzY3I6ZXQ="),
            Some(b"s3cr:et".to_vec())
        );
        assert_eq!(
            basic_password(b"  basic   QWxhZGRpbjpvcGVuIHNlc2FtZQ==  "),
            Some(b"open sesame".to_vec())
        );
        // ":tok" without padding: an empty user name is fine.
        assert_eq!(basic_password(b"BASIC OnRvaw"), Some(b"tok".to_vec()));
    }

    #[test]
    fn basic_counts_only_where_it_is_allowed() {
        let basic = b"Basic OnRvaw".as_slice();
        assert_eq!(presented_token(Some(basic), false), None);
        assert_eq!(
            presented_token(Some(basic), true).as_deref(),
            Some(&b"tok"[..])
        );
        let bearer = b"Bearer tok".as_slice();
        assert_eq!(
            presented_token(Some(bearer), false).as_deref(),
            Some(&b"tok"[..])
        );
        assert_eq!(
            presented_token(Some(bearer), true).as_deref(),
            Some(&b"tok"[..])
        );
        assert_eq!(presented_token(None, true), None);
    }

    #[test]
    fn basic_without_a_password_or_with_bad_base64_is_nothing() {
        assert_eq!(basic_password(b"Basic dXNlcg=="), None, "no colon");
        assert_eq!(basic_password(b"Basic dXNlcjo="), None, "empty password");
        assert_eq!(basic_password(b"Basic dXN!cjp4"), None);
        assert_eq!(basic_password(b"Basic dXNlc"), None, "a lone sextet");
        assert_eq!(basic_password(b"Basic"), None);
        assert_eq!(basic_password(b"Basicdxnlcjp4"), None);
        assert_eq!(basic_password(b"Bearer dXNlcjp4"), None);
        assert_eq!(bearer_token(b"Basic dXNlcjp4"), None);
    }

    #[test]
    fn base64_round_trips_every_length() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let encode = |data: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            for chunk in data.chunks(3) {
                let mut b = [0u8; 3];
                b[..chunk.len()].copy_from_slice(chunk);
                let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
                for i in 0..=chunk.len() {
                    out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize]);
                }
            }
            out
        };
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..40 {
            assert_eq!(
                base64_decode(&encode(&data[..len])),
                Some(data[..len].to_vec())
            );
        }
    }

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
    fn find_token_returns_the_matching_index() {
        let t = tokens(&["one", "two", "three"]);
        assert_eq!(find_token(b"one", &t), Some(0));
        assert_eq!(find_token(b"two", &t), Some(1));
        assert_eq!(find_token(b"three", &t), Some(2));
        assert_eq!(find_token(b"four", &t), None);
        assert_eq!(find_token(b"", &t), None);
        assert_eq!(find_token(b"one", &[]), None);
    }

    #[test]
    fn glob_literal_matches_only_itself() {
        assert!(glob_matches("gpt-4o", "gpt-4o"));
        assert!(!glob_matches("gpt-4o", "gpt-4o-mini"));
        assert!(!glob_matches("gpt-4o", "gpt-4"));
        assert!(!glob_matches("GPT-4o", "gpt-4o"));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "a"));
    }

    #[test]
    fn glob_star_matches_any_run() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "Qwen/Qwen3-8B"));
        assert!(glob_matches("qwen*", "qwen"));
        assert!(glob_matches("qwen*", "qwen3-coder"));
        assert!(!glob_matches("qwen*", "Qwen3"));
        assert!(glob_matches("*-mini", "gpt-4o-mini"));
        assert!(!glob_matches("*-mini", "gpt-4o-mini2"));
        assert!(glob_matches("a*b*c", "a-b-b-c"));
        assert!(!glob_matches("a*b*c", "a-c-b"));
        assert!(glob_matches("**x", "yyx"));
        assert!(glob_matches("Qwen/*", "Qwen/Qwen3-8B"));
    }

    #[test]
    fn glob_question_mark_matches_one_char() {
        assert!(glob_matches("gpt-?", "gpt-4"));
        assert!(!glob_matches("gpt-?", "gpt-"));
        assert!(!glob_matches("gpt-?", "gpt-4o"));
        assert!(glob_matches("?é?", "aéb"));
        assert!(glob_matches("*é", "ééé"));
        assert!(glob_matches("日本*", "日本語"));
        assert!(!glob_matches("日?", "日本語"));
    }

    #[test]
    fn glob_backtracking_stays_correct_on_repeats() {
        assert!(glob_matches("*aab", "aaaaaab"));
        assert!(!glob_matches("*aab", "aaaaaa"));
        assert!(glob_matches("*a*a*a*b", &format!("{}b", "a".repeat(50))));
        assert!(!glob_matches("*a*a*a*b", &"a".repeat(50)));
    }

    #[test]
    fn scope_all_allows_everything_and_models_checks_every_name() {
        assert!(Scope::All.allows(["x"].into_iter()));
        let s = Scope::Models(vec!["chat".into(), "vision-*".into()]);
        assert!(s.allows(["chat"].into_iter()));
        assert!(s.allows(["vision-large"].into_iter()));
        assert!(!s.allows(["embed"].into_iter()));
        // A route is in scope when its name or any alias matches.
        assert!(s.allows(["big-model", "chat"].into_iter()));
        assert!(!s.allows(std::iter::empty()));
    }

    #[test]
    fn token_comparison_is_case_sensitive() {
        assert!(!token_matches(b"ONE", &tokens(&["one"])));
    }
}
