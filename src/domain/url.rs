//! Links that come from events (a newsletter's web version, ...): the contract's rules.

/// The contract's limit on a URL.
pub const MAX_URL: usize = 2_000;

/// Parses a link: at most 2,000 characters, no white space or control characters, `https`, or
/// `http` only for this machine (`localhost`, `127.0.0.1`, `[::1]`), with a host. Returns the
/// normalised form, which is percent-encoded and so safe in an attribute and in plain text.
pub fn parse_link(raw: &str) -> Result<String, String> {
    let len = raw.chars().count();
    if len > MAX_URL {
        return Err(format!("too long ({len} characters; at most {MAX_URL})"));
    }
    // The URL parser would silently drop tabs and line breaks: refuse them instead.
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not a URL (it contains white space)".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    let local = matches!(
        url.host_str(),
        Some("localhost") | Some("127.0.0.1") | Some("[::1]")
    );
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => return Err("must be https (http only for localhost)".into()),
        _ => return Err("must be an https URL".into()),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("not a URL (no host)".into());
    }
    if url.as_str().chars().count() > MAX_URL {
        return Err(format!("too long once normalised (at most {MAX_URL})"));
    }
    Ok(url.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_here() {
        assert_eq!(
            parse_link("https://example.org/newsletters/north-west/2024-11").as_deref(),
            Ok("https://example.org/newsletters/north-west/2024-11")
        );
        assert!(parse_link("http://localhost:8080/x").is_ok());
        assert!(parse_link("http://127.0.0.1/x").is_ok());
        assert!(parse_link("http://example.org/x").is_err());
        assert!(parse_link("javascript:alert(1)").is_err());
        assert!(parse_link("ftp://example.org/x").is_err());
        assert!(parse_link("https://exa mple.org").is_err());
        assert!(parse_link("https://example.org/\r\nx").is_err());
        assert!(parse_link(&format!("https://example.org/{}", "a".repeat(2000))).is_err());
        assert!(parse_link("not a url").is_err());
    }

    #[test]
    fn quotes_and_brackets_come_back_percent_encoded() {
        assert_eq!(
            parse_link("https://example.org/a\"<b>").as_deref(),
            Ok("https://example.org/a%22%3Cb%3E")
        );
    }

    /// 2,000 characters pass, 2,001 do not, before and after normalising.
    #[test]
    fn the_edges_of_a_link() {
        let base = "https://example.org/";
        let at_limit = format!("{base}{}", "a".repeat(2_000 - base.len()));
        assert_eq!(parse_link(&at_limit).as_deref(), Ok(at_limit.as_str()));
        let over = format!("{at_limit}a");
        assert!(parse_link(&over).unwrap_err().starts_with("too long ("));
        // Short enough as written, too long once its quotes are percent-encoded.
        let grows = format!("{base}{}", "\"".repeat(1_000));
        assert!(parse_link(&grows)
            .unwrap_err()
            .starts_with("too long once normalised"));
        assert!(parse_link("https://example.org/a\tb").is_err());
        assert!(parse_link("https://example.org/a\u{7}b").is_err());
    }
}
