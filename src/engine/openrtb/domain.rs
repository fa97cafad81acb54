//! The domain-or-app name a DSP passes to the CSTG check (UID2 DSP guide): for a site, the registrable
//! domain of `site.domain` (else of the host of `site.page`), lower-cased; for an app, `app.bundle` as
//! sent; otherwise none. Pure; depends on std and psl (the public suffix list compiled into the crate).

use std::borrow::Cow;

/// Picks the name for the domain check from what the request carries. A site wins over an app when a
/// (malformed) request has both, as the site fields are the ones OpenRTB requires for web inventory.
pub fn domain_or_app_name<'a>(
    site_domain: Option<&'a str>,
    site_page: Option<&'a str>,
    app_bundle: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    let site_host = site_domain
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(host_of)
        .or_else(|| site_page.map(host_of))
        .filter(|h| !h.is_empty());
    if let Some(host) = site_host {
        return Some(registrable_domain(host));
    }
    app_bundle
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(Cow::Borrowed)
}

/// The host part of a URL or of a bare `host[:port]`: scheme, user info, port, path, query, fragment and a
/// trailing dot are dropped.
pub fn host_of(url: &str) -> &str {
    let url = url.trim();
    let after_scheme = match url.find("://") {
        Some(i)
            if url[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            &url[i + 3..]
        }
        _ => url.strip_prefix("//").unwrap_or(url),
    };
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // An IPv6 literal: keep the brackets' content whole.
        host_port
            .split_once(']')
            .map_or(host_port, |(h, _)| &h[1..])
    } else {
        host_port.split_once(':').map_or(host_port, |(h, _)| h)
    };
    host.trim_end_matches('.')
}

/// eTLD+1 by the public suffix list (`Subdomain.DOMAIN.com` → `domain.com`, `a.b.example.co.uk` →
/// `example.co.uk`). A host that has no registrable part (an IP address, `localhost`, a bare suffix) is
/// returned whole, lower-cased.
pub fn registrable_domain(host: &str) -> Cow<'_, str> {
    // The list's default `*` rule would cut an IPv4 literal to its last two octets.
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Cow::Borrowed(host);
    }
    let lower: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    let registrable_len = psl::domain(lower.as_bytes()).map(|d| d.as_bytes().len());
    match (lower, registrable_len) {
        (Cow::Borrowed(h), Some(n)) => Cow::Borrowed(&h[h.len() - n..]),
        (Cow::Owned(h), Some(n)) => Cow::Owned(h[h.len() - n..].to_string()),
        (whole, None) => whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_domain_is_reduced_to_the_registrable_domain() {
        let name = |d, p, a| domain_or_app_name(d, p, a).map(Cow::into_owned);
        assert_eq!(
            name(Some("Subdomain.DOMAIN.com"), None, None).as_deref(),
            Some("domain.com")
        );
        assert_eq!(
            name(Some("www.bbc.co.uk"), None, None).as_deref(),
            Some("bbc.co.uk")
        );
        assert_eq!(
            name(Some("example.com"), None, None).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            name(Some("news.example.com."), None, None).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            name(Some("user.github.io"), None, None).as_deref(),
            Some("user.github.io")
        );
        assert_eq!(
            name(None, Some("https://M.Example.org:8443/a/b?c=d#e"), None).as_deref(),
            Some("example.org")
        );
        assert_eq!(
            name(None, Some("//cdn.example.net/x"), None).as_deref(),
            Some("example.net")
        );
        assert_eq!(
            name(Some(""), Some("http://u:p@www.example.de/"), None).as_deref(),
            Some("example.de")
        );
        assert_eq!(
            name(Some("localhost"), None, None).as_deref(),
            Some("localhost")
        );
        assert_eq!(
            name(Some("127.0.0.1"), None, None).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            name(None, Some("http://[::1]:80/"), None).as_deref(),
            Some("::1")
        );
    }

    #[test]
    fn app_bundle_is_passed_as_sent_and_absence_gives_none() {
        let name = |d, p, a| domain_or_app_name(d, p, a).map(Cow::into_owned);
        assert_eq!(
            name(None, None, Some("com.123.Game.App.android")).as_deref(),
            Some("com.123.Game.App.android")
        );
        assert_eq!(
            name(None, None, Some("123456789")).as_deref(),
            Some("123456789")
        );
        assert_eq!(
            name(Some("example.com"), None, Some("com.app")).as_deref(),
            Some("example.com")
        );
        assert_eq!(name(None, None, None), None);
        assert_eq!(name(Some("  "), Some(""), Some("")), None);
    }

    #[test]
    fn lower_case_hosts_borrow() {
        assert!(matches!(
            registrable_domain("www.example.com"),
            Cow::Borrowed("example.com")
        ));
    }
}
