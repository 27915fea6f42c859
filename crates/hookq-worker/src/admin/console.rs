//! The web console's static files under `/console` (issue 17 item 2):
//! `index.html`, `app.js` and `style.css` from `crates/hookq-worker/console/`,
//! built into the binary, so the console needs no build step and no files
//! beside the binary.
//!
//! They are served without a token: the page holds no figure, it asks for
//! the admin token and reads everything through the admin API
//! ([`super::api`]), which needs it. Every answer carries
//! `Cache-Control: no-cache` (a browser revalidates, so an upgrade shows at
//! once) and a Content-Security-Policy that lets the page load and call
//! nothing but this origin's own files and API, no inline script or style,
//! and no framing.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const STYLE_CSS: &str = include_str!("../../console/style.css");

/// The policy of every console answer: only this origin's scripts, styles
/// and API; images only the empty `data:` favicon; no plugins, frames, forms
/// or `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The console's routes, served without a token: every figure the console
/// shows comes from the admin API, which needs one.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { file(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        // The page's links are absolute, so `/console/` shows the same page.
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
        .route(
            "/console/app.js",
            get(|| async { file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/style.css",
            get(|| async { file(STYLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// One of the files, with its type and the console's headers.
fn file(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page references exactly the two files served beside it.
    #[test]
    fn the_page_loads_the_files_served_beside_it() {
        assert!(INDEX_HTML.contains(r#"<script src="/console/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/console/style.css">"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1, "no inline script");
        assert!(!INDEX_HTML.contains("style=\""), "no inline style");
    }

    /// The policy is one header value and allows no inline code or other origin.
    #[test]
    fn the_policy_allows_only_this_origin() {
        assert!(HeaderValue::from_str(CONTENT_SECURITY_POLICY).is_ok());
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
        assert!(!CONTENT_SECURITY_POLICY.contains('*'));
    }
}
