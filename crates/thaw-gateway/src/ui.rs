//! The dashboard at `/ui/` (docs/dashboard.md): plain HTML, CSS and ES
//! modules compiled into the binary, with no build step and nothing
//! fetched from elsewhere. It holds no data and no policy of its own: the
//! page calls the same `/v1` API as the CLI, with the key the user signed
//! in with as a bearer token, and shows what that key may see.
//!
//! Every answer here carries a strict Content-Security-Policy (scripts,
//! styles and API calls from this origin only, no inline script or style,
//! no framing), `nosniff` and `no-referrer`; the scripts build the page
//! with DOM APIs only, so text a function or tenant controls (names, log
//! lines, bodies, errors) is never parsed as HTML.

use crate::platform::Platform;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// What a page of the dashboard may load and do: its own files and API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's files: name under `/ui/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/dom.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/charts.js"),
    ),
    (
        "functions.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/functions.js"),
    ),
    (
        "function.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/function.js"),
    ),
    (
        "platform.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/platform.js"),
    ),
];

pub fn router() -> Router<Arc<Platform>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route(
            "/ui/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

/// One file of the dashboard, or a 404, with the headers every answer
/// under `/ui/` carries.
fn file(name: &str) -> Response {
    let mut response = match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file of the dashboard\n").into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with thaw's binary: asked again each time, they
        // never outlive an upgrade.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_the_safety_headers() {
        for (name, content_type, body) in FILES {
            let r = file(name);
            assert_eq!(r.status(), StatusCode::OK);
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], *content_type);
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert!(!body.is_empty(), "{name}");
        }
        let missing = file("../token");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }

    /// The scripts never turn text into markup, and load nothing from
    /// elsewhere: the page would still be safe under its policy, but the
    /// rule is kept in the code too.
    #[test]
    fn no_script_parses_html_or_reaches_elsewhere() {
        let forbidden = [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "DOMParser",
            "createContextualFragment",
            "http://",
            "https://",
            "localStorage",
            "document.cookie",
        ];
        for (name, _, body) in FILES {
            for word in forbidden {
                // The SVG namespace is a name, not a place to load from.
                let text = body.replace("'http://www.w3.org/2000/svg'", "");
                assert!(!text.contains(word), "{name} uses {word}");
            }
        }
    }

    /// Every module a file imports, and every file the page links, is
    /// served; every file served is used.
    #[test]
    fn the_files_reference_each_other_and_nothing_else() {
        let mut used = vec!["index.html"];
        for (_, _, body) in FILES {
            for quote in ['\'', '"'] {
                for piece in body.split(quote) {
                    let name = piece.trim_start_matches("./");
                    if (name.ends_with(".js") || name.ends_with(".css"))
                        && !name.contains(' ')
                        && !name.contains('/')
                    {
                        assert!(
                            FILES.iter().any(|(n, _, _)| *n == name),
                            "{name} is referenced but not served"
                        );
                        used.push(FILES.iter().find(|(n, _, _)| *n == name).unwrap().0);
                    }
                }
            }
        }
        for (name, _, _) in FILES {
            assert!(used.contains(name), "{name} is served but never used");
        }
    }
}
