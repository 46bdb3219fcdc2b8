//! Upstream URLs and listen addresses: the string forms of SPEC.md §2.
//!
//! Pure string → value functions; the messages they return are appended to a key path by the
//! caller, so they never repeat the offending value when it could hold credentials (userinfo).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::{Listen, Scheme, Upstream};

/// Parses a model URL: `http://host[:port][/base][?query]`, `https://…`,
/// `unix:///abs/path.sock` (or `unix:/abs/path.sock`).
pub fn parse_upstream_url(url: &str) -> Result<Upstream, String> {
    if url.is_empty() {
        return Err("is empty".into());
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("must not contain spaces or control characters".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment (\"#...\")".into());
    }
    if let Some(rest) = strip_prefix_ci(url, "unix:") {
        return parse_unix_url(rest);
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(missing_scheme_message(url));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other
            if other
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+') =>
        {
            return Err(format!(
                "unsupported scheme \"{other}\" (use http://, https:// or unix://)"
            ))
        }
        _ => return Err("unsupported scheme (use http://, https:// or unix://)".into()),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, remainder) = rest.split_at(split);
    if authority.contains('@') {
        return Err("must not contain user info (\"user:pass@\"); send credentials with \"headers\" instead".into());
    }
    if authority.is_empty() {
        return Err("has no host".into());
    }
    let (host, port) = parse_authority(authority)?;
    let port = port.unwrap_or(match scheme {
        Scheme::Https => 443,
        _ => 80,
    });
    let (path, query) = match remainder.split_once('?') {
        Some((p, q)) => (p, (!q.is_empty()).then(|| q.to_string())),
        None => (remainder, None),
    };
    Ok(Upstream {
        scheme,
        host,
        port,
        authority: authority.to_string(),
        unix_path: None,
        base_path: path.trim_end_matches('/').to_string(),
        query,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn missing_scheme_message(url: &str) -> String {
    let looks_like_host = url
        .split(['/', '?'])
        .next()
        .is_some_and(|a| !a.is_empty() && !a.contains('@') && parse_authority(a).is_ok());
    if looks_like_host {
        format!("must start with http://, https:// or unix:// (did you mean \"http://{url}\"?)")
    } else {
        "must start with http://, https:// or unix://".into()
    }
}

/// `unix:` already stripped: `///abs` or `/abs`. The whole rest is the socket path: a unix
/// upstream has no base path and no query.
fn parse_unix_url(rest: &str) -> Result<Upstream, String> {
    let path = match rest.strip_prefix("//") {
        Some(p) => p,
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(
            "a unix URL needs an absolute socket path, like \"unix:///run/llm.sock\"".into(),
        );
    }
    if path.contains('?') {
        return Err("a unix URL is only a socket path; it takes no query (\"?...\")".into());
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("a unix URL needs a socket path, like \"unix:///run/llm.sock\"".into());
    }
    Ok(Upstream {
        scheme: Scheme::Unix,
        host: String::new(),
        port: 0,
        authority: "localhost".into(),
        unix_path: Some(PathBuf::from(path)),
        base_path: String::new(),
        query: None,
    })
}

/// `host[:port]` or `[v6][:port]` → host without brackets, explicit port.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("has an unclosed \"[\" in the host")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "has an invalid IPv6 address in \"[...]\"".to_string())?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("has unexpected text after \"]\"")?,
            ),
        };
        (v6.to_string(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("has an IPv6 address without brackets (write \"[::1]:8000\")".into());
        }
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err("has an invalid host name".into());
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p, 1)?),
    };
    Ok((host, port))
}

/// A decimal port in `min..=65535`.
fn parse_port(p: &str, min: u16) -> Result<u16, String> {
    if p.is_empty() {
        return Err("has an empty port".into());
    }
    match p.parse::<u16>() {
        Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) && n >= min => Ok(n),
        _ => Err(format!(
            "has an invalid port \"{p}\" (expected {min}..65535)"
        )),
    }
}

/// Parses one listen address: `":8080"` (all IPv4 interfaces), `"127.0.0.1:8080"`,
/// `"[::1]:8080"`, `"localhost:8080"` (127.0.0.1), `"unix:/run/x.sock"`, `"unix:///run/x.sock"`.
/// Port 0 asks the OS for a free port (the startup line shows which).
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(rest) = strip_prefix_ci(s, "unix:") {
        let path = match rest.strip_prefix("//") {
            Some(p) if p.starts_with('/') => p,
            Some(_) => {
                return Err(
                    "\"unix://\" needs an absolute path, like \"unix:///run/modelgate.sock\""
                        .into(),
                )
            }
            None => rest,
        };
        if path.is_empty() {
            return Err("\"unix:\" needs a socket path, like \"unix:/run/modelgate.sock\"".into());
        }
        if path.contains('\0') {
            return Err("socket path must not contain NUL".into());
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Listen::Tcp(addr));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "is missing the \":\" before the port (did you mean \":{s}\"?)"
            ));
        }
        return Err("expected \":PORT\", \"HOST:PORT\" or \"unix:PATH\"".into());
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err("IPv6 addresses need brackets, like \"[::1]:8080\"".into());
    }
    let port = parse_port(port, 0)?;
    let ip = listen_host(host)?;
    Ok(Listen::Tcp(SocketAddr::new(ip, port)))
}

/// A listen host: an IP literal (IPv6 with or without brackets), `localhost`, or empty for
/// all IPv4 interfaces. Names are not resolved: a listener must not depend on DNS.
pub fn listen_host(host: &str) -> Result<IpAddr, String> {
    if host.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    if host.contains(':') {
        return Err("IPv6 addresses need brackets, like \"[::1]:8080\"".into());
    }
    Err(format!(
        "host \"{host}\" must be an IP address or \"localhost\" (names are not resolved for listening)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(url: &str) -> Upstream {
        parse_upstream_url(url).unwrap()
    }

    fn up_err(url: &str) -> String {
        parse_upstream_url(url).unwrap_err()
    }

    #[test]
    fn http_url_with_port_and_base_path() {
        let u = up("http://127.0.0.1:9001/v1");
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 9001);
        assert_eq!(u.authority, "127.0.0.1:9001");
        assert_eq!(u.base_path, "/v1");
        assert_eq!(u.query, None);
        assert_eq!(u.unix_path, None);
    }

    #[test]
    fn http_default_port_is_80() {
        let u = up("http://backend");
        assert_eq!(
            (u.port, u.authority.as_str(), u.base_path.as_str()),
            (80, "backend", "")
        );
    }

    #[test]
    fn https_default_port_is_443() {
        let u = up("https://api.openai.com");
        assert_eq!((u.scheme, u.port), (Scheme::Https, 443));
        assert_eq!(u.authority, "api.openai.com");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(up("HTTPS://h").scheme, Scheme::Https);
    }

    #[test]
    fn trailing_slashes_leave_base_path() {
        assert_eq!(up("http://h:1/v1/").base_path, "/v1");
        assert_eq!(up("http://h:1/").base_path, "");
    }

    #[test]
    fn query_is_kept_without_question_mark() {
        let u = up("https://h/openai/deployments/x?api-version=2024-06-01");
        assert_eq!(u.base_path, "/openai/deployments/x");
        assert_eq!(u.query.as_deref(), Some("api-version=2024-06-01"));
    }

    #[test]
    fn query_without_path() {
        let u = up("http://h?a=1");
        assert_eq!(
            (u.base_path.as_str(), u.query.as_deref()),
            ("", Some("a=1"))
        );
    }

    #[test]
    fn empty_query_is_none() {
        assert_eq!(up("http://h/v1?").query, None);
    }

    #[test]
    fn ipv6_literal_host_is_unbracketed_but_authority_is_not() {
        let u = up("http://[::1]:9000/v1");
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority, "[::1]:9000");
        assert_eq!(u.port, 9000);
    }

    #[test]
    fn unix_url_with_three_slashes() {
        let u = up("unix:///run/llm.sock");
        assert_eq!(u.scheme, Scheme::Unix);
        assert_eq!(u.unix_path, Some(PathBuf::from("/run/llm.sock")));
        assert_eq!(u.authority, "localhost");
        assert_eq!((u.host.as_str(), u.port, u.base_path.as_str()), ("", 0, ""));
    }

    #[test]
    fn unix_url_with_one_slash() {
        assert_eq!(
            up("unix:/run/llm.sock").unix_path,
            Some(PathBuf::from("/run/llm.sock"))
        );
    }

    #[test]
    fn unix_url_with_relative_path_is_error() {
        assert!(up_err("unix://run/llm.sock").contains("absolute"));
        assert!(up_err("unix:run.sock").contains("absolute"));
    }

    #[test]
    fn unix_url_with_query_is_error() {
        assert!(up_err("unix:///run/llm.sock?x=1").contains("query"));
    }

    #[test]
    fn unix_url_without_path_is_error() {
        assert!(up_err("unix:///").contains("socket path"));
    }

    #[test]
    fn userinfo_is_error_without_echoing_it() {
        let e = up_err("https://user:sk-secret@api.example.com/v1");
        assert!(e.contains("user info"));
        assert!(!e.contains("sk-secret"));
    }

    #[test]
    fn fragment_is_error() {
        assert!(up_err("http://h/v1#x").contains("fragment"));
    }

    #[test]
    fn unknown_scheme_is_error() {
        assert!(up_err("ftp://h").contains("unsupported scheme \"ftp\""));
    }

    #[test]
    fn missing_scheme_suggests_http() {
        let e = up_err("localhost:9001/v1");
        assert!(
            e.contains("did you mean \"http://localhost:9001/v1\"?"),
            "{e}"
        );
    }

    #[test]
    fn port_zero_is_error() {
        assert!(up_err("http://h:0").contains("invalid port"));
    }

    #[test]
    fn port_too_large_is_error() {
        assert!(up_err("http://h:65536").contains("invalid port"));
    }

    #[test]
    fn non_numeric_port_is_error() {
        assert!(up_err("http://h:+80").contains("invalid port"));
        assert!(up_err("http://h:http").contains("invalid port"));
    }

    #[test]
    fn empty_port_is_error() {
        assert!(up_err("http://h:/v1").contains("empty port"));
    }

    #[test]
    fn empty_host_is_error() {
        assert!(up_err("http:///v1").contains("no host"));
        assert!(up_err("http://:80").contains("no host"));
    }

    #[test]
    fn unbracketed_ipv6_is_error() {
        assert!(up_err("http://::1:80").contains("brackets"));
    }

    #[test]
    fn bad_ipv6_literal_is_error() {
        assert!(up_err("http://[zz]:80").contains("IPv6"));
        assert!(up_err("http://[::1").contains("unclosed"));
    }

    #[test]
    fn text_after_ipv6_bracket_is_error() {
        assert!(up_err("http://[::1]x").contains("after"));
    }

    #[test]
    fn invalid_host_characters_are_error() {
        assert!(up_err("http://ho%73t").contains("invalid host"));
    }

    #[test]
    fn whitespace_in_url_is_error() {
        assert!(up_err("http://h/v1 ").contains("spaces"));
    }

    #[test]
    fn empty_url_is_error() {
        assert_eq!(up_err(""), "is empty");
    }

    #[test]
    fn listen_port_only_means_all_ipv4_interfaces() {
        assert_eq!(
            parse_listen(":8080").unwrap(),
            Listen::Tcp("0.0.0.0:8080".parse().unwrap())
        );
    }

    #[test]
    fn listen_ipv4_and_ipv6_literals() {
        assert_eq!(
            parse_listen("127.0.0.1:8080").unwrap(),
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[::1]:8080").unwrap(),
            Listen::Tcp("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn listen_localhost_is_ipv4_loopback() {
        assert_eq!(
            parse_listen("localhost:8080").unwrap(),
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
    }

    #[test]
    fn listen_port_zero_is_allowed() {
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
    }

    #[test]
    fn listen_unix_forms() {
        let want = Listen::Unix(PathBuf::from("/run/x.sock"));
        assert_eq!(parse_listen("unix:/run/x.sock").unwrap(), want);
        assert_eq!(parse_listen("unix:///run/x.sock").unwrap(), want);
    }

    #[test]
    fn listen_unix_double_slash_relative_is_error() {
        assert!(parse_listen("unix://run/x.sock").is_err());
    }

    #[test]
    fn listen_empty_unix_path_is_error() {
        assert!(parse_listen("unix:").is_err());
    }

    #[test]
    fn listen_bare_port_suggests_colon() {
        assert!(parse_listen("8080")
            .unwrap_err()
            .contains("did you mean \":8080\"?"));
    }

    #[test]
    fn listen_host_name_is_error() {
        assert!(parse_listen("example.com:8080")
            .unwrap_err()
            .contains("IP address"));
    }

    #[test]
    fn listen_bad_port_is_error() {
        assert!(parse_listen(":99999").unwrap_err().contains("invalid port"));
        assert!(parse_listen(":").unwrap_err().contains("empty port"));
    }

    #[test]
    fn listen_unbracketed_ipv6_is_error() {
        assert!(parse_listen("::1:8080").unwrap_err().contains("brackets"));
    }

    #[test]
    fn listen_host_accepts_bracketed_and_bare_ipv6() {
        assert_eq!(
            listen_host("::1").unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            listen_host("[::1]").unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
