//! Comparing GitLab URLs the way an operator means them, and reading a runner's `url` the way
//! gitlab-runner does.

use url::Url;

/// Lower-case scheme and host (the url crate does that), no default port, no trailing slash,
/// path prefix (e.g. `/gitlab`) kept, no query or fragment.
pub fn normalize_url(url: &Url) -> Url {
    // The url crate already drops a default port (`:443` on https) when it parses.
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let path = u.path().trim_end_matches('/').to_string();
    u.set_path(if path.is_empty() { "/" } else { &path });
    u
}

/// The normalised string form used for comparisons and display (no trailing `/`).
pub fn url_key(url: &Url) -> String {
    normalize_url(url)
        .as_str()
        .trim_end_matches('/')
        .to_string()
}

/// The `url` of runners registered before GitLab 9.0 ends in `/ci` (the old CI API lived under
/// `/ci/api/v1`). gitlab-runner removes trailing slashes and then one trailing `/ci` before it
/// appends `/api/v4/` (`fixCIURL`, gitlab-org/gitlab-runner `network/client.go`), so such a
/// runner still works; runner-medic must call the same `/api/v4/...`, not `/ci/api/v4/...`,
/// which GitLab answers with 404.
pub fn has_legacy_ci_suffix(text: &str) -> bool {
    Url::parse(text.trim()).is_ok_and(|u| u.path().trim_end_matches('/').ends_with("/ci"))
}

/// Parse a `url` value from config.toml; `Err` says why it is not usable. A legacy trailing
/// `/ci` is dropped, as gitlab-runner does (`has_legacy_ci_suffix`).
pub fn parse_runner_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| e.to_string())?;
    let path = url.path().trim_end_matches('/');
    if let Some(base) = path.strip_suffix("/ci") {
        let base = base.to_string();
        url.set_path(&base);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(normalize_url(&url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        url_key(&Url::parse(s).unwrap())
    }

    #[test]
    fn equivalent_spellings_compare_equal() {
        assert_eq!(
            key("HTTPS://GitLab.Example.com:443/"),
            key("https://gitlab.example.com")
        );
        assert_eq!(
            key("http://gitlab.example.com:80"),
            key("http://gitlab.example.com/")
        );
        assert_eq!(
            key("https://example.com/gitlab/"),
            key("https://example.com/gitlab")
        );
        assert_ne!(
            key("https://example.com/gitlab"),
            key("https://example.com")
        );
        assert_ne!(key("https://example.com:8443"), key("https://example.com"));
        assert_ne!(key("http://example.com"), key("https://example.com"));
    }

    #[test]
    fn invalid_runner_urls_say_why() {
        assert!(parse_runner_url("gitlab.example.com").is_err());
        assert!(parse_runner_url("ftp://gitlab.example.com")
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_runner_url("https://gitlab.example.com/").is_ok());
    }

    #[test]
    fn a_legacy_ci_suffix_is_dropped_like_gitlab_runner_does() {
        let k = |s: &str| url_key(&parse_runner_url(s).unwrap());
        assert_eq!(
            k("https://gitlab.example.com/ci"),
            "https://gitlab.example.com"
        );
        assert_eq!(
            k("https://gitlab.example.com/ci/"),
            "https://gitlab.example.com"
        );
        assert_eq!(
            k("https://example.com/gitlab/ci"),
            "https://example.com/gitlab"
        );
        // Only one `/ci`, and only as the last segment.
        assert_eq!(k("https://example.com/ci/ci"), "https://example.com/ci");
        assert_eq!(k("https://example.com/cicd"), "https://example.com/cicd");
        assert!(has_legacy_ci_suffix("https://gitlab.example.com/ci/"));
        assert!(!has_legacy_ci_suffix("https://gitlab.example.com/cicd"));
        assert!(!has_legacy_ci_suffix("https://ci"));
        assert_eq!(k("https://ci"), "https://ci");
    }
}
