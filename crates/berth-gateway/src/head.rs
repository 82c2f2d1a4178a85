//! What the gateway reads of a request head to decide where it goes, whichever parser read it:
//! hyper's (HTTP/2, upgrades, the general path) or the relay's (`httparse`, plain HTTP/1.1).
//! From it come the service a request is for ([`Target`]), the caller's token and the sticky
//! routing key.

use std::borrow::Cow;

use hyper::header;

use crate::serving::ServingSettings;

/// A request head, as far as routing needs it.
pub trait Head {
    /// The request target's path and query (`/` when it has none).
    fn path_and_query(&self) -> &str;
    /// The authority of an absolute request target (`http://host/…`), if it has one.
    fn uri_authority(&self) -> Option<&str>;
    /// Every value of header `name` (case-insensitive), in order.
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of header `name`.
    fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// The token of `Authorization: Bearer …`.
    fn bearer_token(&self) -> Option<&str> {
        self.header(header::AUTHORIZATION.as_str())
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
    }
}

impl<B> Head for hyper::Request<B> {
    fn path_and_query(&self) -> &str {
        self.uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
    }

    fn uri_authority(&self) -> Option<&str> {
        self.uri().authority().map(|authority| authority.as_str())
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .get_all(name)
            .into_iter()
            .map(|value| value.as_bytes())
    }
}

impl Head for httparse::Request<'_, '_> {
    fn path_and_query(&self) -> &str {
        self.path.unwrap_or("/")
    }

    fn uri_authority(&self) -> Option<&str> {
        None
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }
}

/// Which service a request is for, and the path to pass on.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The owner's user name.
    pub owner: &'a str,
    /// The service's name.
    pub service: &'a str,
    /// Path and query at the replica.
    pub path_and_query: Cow<'a, str>,
    /// The path prefix the gateway removes (`/s/alice/flood`), or empty for host routing.
    pub prefix: &'a str,
}

/// The service `head` is for: by host under `domain`, else by path (`/s/{owner}/{service}/…`).
pub fn target_of<'a>(head: &'a impl Head, domain: Option<&str>) -> Option<Target<'a>> {
    let path_and_query = head.path_and_query();
    if let Some(domain) = domain {
        let host = head
            .header(header::HOST.as_str())
            .and_then(|value| std::str::from_utf8(value).ok())
            .or_else(|| head.uri_authority());
        let hostname = host.map(|host| {
            host.rsplit_once(':').map_or(host, |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            })
        });
        if let Some(labels) = hostname
            .and_then(|name| name.strip_suffix(domain))
            .and_then(|rest| rest.strip_suffix('.'))
            && let Some((service, owner)) = labels.rsplit_once('.')
            && !service.is_empty()
            && !owner.is_empty()
        {
            return Some(Target {
                owner,
                service,
                path_and_query: Cow::Borrowed(path_and_query),
                prefix: "",
            });
        }
    }
    let rest = path_and_query.strip_prefix("/s/")?;
    let (owner, rest) = rest.split_once('/')?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (service, tail) = rest.split_at(split);
    if owner.is_empty() || service.is_empty() {
        return None;
    }
    let prefix = &path_and_query[.."/s/".len() + owner.len() + 1 + service.len()];
    let path_and_query = if tail.starts_with('/') {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned(format!("/{tail}"))
    };
    Some(Target {
        owner,
        service,
        path_and_query,
        prefix,
    })
}

/// The request's sticky key: the header or cookie the routing settings name.
pub fn affinity_of<'a>(head: &'a impl Head, settings: &'a ServingSettings) -> Option<&'a str> {
    let affinity = settings.routing.affinity.as_ref()?;
    if let Some(name) = &affinity.header {
        return head
            .header(name.as_str())
            .and_then(|value| std::str::from_utf8(value).ok());
    }
    let cookie = affinity.cookie.as_deref()?;
    head.header_values(header::COOKIE.as_str())
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: &str) -> hyper::Request<()> {
        hyper::Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn paths_and_hosts_name_the_service() {
        let request_by_path = request("/s/alice/flood/predict?x=1", "hub:7701");
        let by_path = target_of(&request_by_path, None).expect("path route");
        assert_eq!(
            by_path,
            Target {
                owner: "alice",
                service: "flood",
                path_and_query: Cow::Borrowed("/predict?x=1"),
                prefix: "/s/alice/flood",
            }
        );
        let bare_request = request("/s/alice/flood?x=1", "hub");
        let bare = target_of(&bare_request, None).expect("bare");
        assert_eq!(
            (bare.path_and_query.as_ref(), bare.prefix),
            ("/?x=1", "/s/alice/flood")
        );
        let root_request = request("/s/alice/flood", "hub");
        assert_eq!(
            target_of(&root_request, None).expect("root").path_and_query,
            "/"
        );
        for wrong in ["/", "/s/", "/s/alice", "/s//flood/", "/api/services"] {
            assert_eq!(target_of(&request(wrong, "hub"), None), None, "{wrong}");
        }
        let host_request = request("/predict", "flood.v2.alice.models.example.org:8080");
        let by_host = target_of(&host_request, Some("models.example.org")).expect("host route");
        assert_eq!(
            (by_host.owner, by_host.service, by_host.prefix),
            ("alice", "flood.v2", "")
        );
        let elsewhere_request = request("/s/bob/ocr/", "other.example.org");
        let elsewhere =
            target_of(&elsewhere_request, Some("models.example.org")).expect("falls back");
        assert_eq!(elsewhere.owner, "bob");
    }

    #[test]
    fn both_parsers_give_the_same_target_token_and_cookie() {
        let raw = b"GET /s/alice/flood/p HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer  t0k \r\n\
                    Cookie: a=1\r\ncookie: session=abc; theme=dark\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut slots);
        assert!(parsed.parse(raw).expect("parses").is_complete());
        let built = hyper::Request::builder()
            .uri("/s/alice/flood/p")
            .header("host", "hub")
            .header("authorization", "Bearer  t0k ")
            .header("cookie", "a=1")
            .header("cookie", "session=abc; theme=dark")
            .body(())
            .expect("request");
        let settings = ServingSettings {
            routing: serde_json::from_value(serde_json::json!({
                "policy": "sticky", "affinity": {"cookie": "session"}
            }))
            .expect("routing"),
            ..Default::default()
        };
        assert_eq!(target_of(&parsed, None), target_of(&built, None));
        assert_eq!(parsed.bearer_token(), Some("t0k"));
        assert_eq!(built.bearer_token(), Some("t0k"));
        assert_eq!(affinity_of(&parsed, &settings), Some("abc"));
        assert_eq!(affinity_of(&built, &settings), Some("abc"));
    }

    #[test]
    fn the_sticky_key_comes_from_the_named_header_or_cookie() {
        let mut settings = ServingSettings {
            routing: serde_json::from_value(serde_json::json!({
                "policy": "sticky", "affinity": {"cookie": "session"}
            }))
            .expect("routing"),
            ..Default::default()
        };
        let with_cookie = hyper::Request::builder()
            .header(header::COOKIE, "theme=dark; session=abc123")
            .body(())
            .expect("request");
        assert_eq!(affinity_of(&with_cookie, &settings), Some("abc123"));
        settings.routing = serde_json::from_value(serde_json::json!({
            "policy": "sticky", "affinity": {"header": "x-user"}
        }))
        .expect("routing");
        let with_header = hyper::Request::builder()
            .header("x-user", "u7")
            .body(())
            .expect("request");
        assert_eq!(affinity_of(&with_header, &settings), Some("u7"));
        assert_eq!(affinity_of(&with_cookie, &settings), None);
    }
}
