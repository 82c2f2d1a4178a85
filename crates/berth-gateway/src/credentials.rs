//! Berth's own credentials, which never reach a service: a Bearer token that is a Berth API token
//! (`berth_…`) and the console's cookies (`berth_…`, or `__Host-berth_…` over HTTPS). Browsers
//! send a host's cookies to every port of it, so a console cookie reaches the gateway too; the
//! gateway removes it from `Cookie` before a request goes on, keeps every other cookie, and drops
//! a service's `Set-Cookie` that would plant one (session fixation).

use std::borrow::Cow;

use berth_store::users::TOKEN_PREFIX;

/// The prefix of every cookie the console sets.
pub const CONSOLE_COOKIE_PREFIX: &str = "berth_";
/// The prefix browsers hold to host-only, Secure, `Path=/` cookies.
const HOST_ONLY_PREFIX: &str = "__Host-";

/// Whether a cookie called `name` is one of the console's.
pub fn is_console_cookie(name: &[u8]) -> bool {
    let name = name.trim_ascii();
    let name = strip_prefix_ignore_case(name, HOST_ONLY_PREFIX.as_bytes()).unwrap_or(name);
    strip_prefix_ignore_case(name, CONSOLE_COOKIE_PREFIX.as_bytes()).is_some()
}

/// Whether an `Authorization` value carries a Berth API token.
pub fn is_hub_authorization(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    strip_prefix_ignore_case(value, b"bearer ")
        .is_some_and(|token| token.trim_ascii().starts_with(TOKEN_PREFIX.as_bytes()))
}

/// A `Cookie` value without the console's cookies: `None` when nothing else is left, borrowed
/// when there was none of them.
pub fn cookies_for_service(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let pairs = || {
        value
            .split(|&byte| byte == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
    };
    let console = |pair: &[u8]| {
        let name = pair.split(|&byte| byte == b'=').next().unwrap_or(pair);
        is_console_cookie(name)
    };
    if !pairs().any(console) {
        return (!value.trim_ascii().is_empty()).then_some(Cow::Borrowed(value));
    }
    let mut kept = Vec::with_capacity(value.len());
    for pair in pairs().filter(|pair| !console(pair)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    (!kept.is_empty()).then_some(Cow::Owned(kept))
}

/// Whether a service's `Set-Cookie` value would set one of the console's cookies.
pub fn sets_console_cookie(value: &[u8]) -> bool {
    let first = value.split(|&byte| byte == b';').next().unwrap_or(value);
    let name = first.split(|&byte| byte == b'=').next().unwrap_or(first);
    is_console_cookie(name)
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_tokens_are_recognised_and_other_credentials_are_not() {
        assert!(is_hub_authorization(b"Bearer berth_0123abcd"));
        assert!(is_hub_authorization(b"bearer   berth_x "));
        assert!(!is_hub_authorization(b"Bearer sk-service-own-key"));
        assert!(!is_hub_authorization(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"));
        assert!(!is_hub_authorization(b"berth_not_bearer"));
    }

    #[test]
    fn console_cookies_leave_and_others_stay() {
        assert!(is_console_cookie(b"berth_session"));
        assert!(is_console_cookie(b"__Host-berth_session"));
        assert!(is_console_cookie(b" BERTH_lang"));
        assert!(!is_console_cookie(b"session"));
        assert!(!is_console_cookie(b"xberth_session"));
        assert_eq!(
            cookies_for_service(b"a=1; berth_session=s3cr3t; theme=dark; __Host-berth_session=x")
                .as_deref(),
            Some(&b"a=1; theme=dark"[..])
        );
        assert!(matches!(
            cookies_for_service(b"a=1; b=2"),
            Some(Cow::Borrowed(b"a=1; b=2"))
        ));
        assert_eq!(cookies_for_service(b"berth_session=s3cr3t"), None);
        assert_eq!(cookies_for_service(b"berth_session=1;berth_lang=zh "), None);
    }

    #[test]
    fn a_service_cannot_set_a_console_cookie() {
        assert!(sets_console_cookie(
            b"berth_session=fixed; Path=/; HttpOnly"
        ));
        assert!(sets_console_cookie(
            b"__Host-berth_session=fixed; Secure; Path=/"
        ));
        assert!(!sets_console_cookie(b"session=mine; Path=/"));
    }
}
