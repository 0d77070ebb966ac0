//! `GET /avemint.js`: the SPA helper (`getToken`, `fetchWithToken`), served by
//! every avemint so an app can import it from the origin it signs in with.
//!
//! The module is the entry point of the npm package `avemint` (`clients/js/avemint.js`, with its
//! TypeScript declarations, Node tests and the React entry `avemint/react` beside it): one source, compiled
//! into the binary here, so the served file and the package never differ. `HEAD /avemint.js` answers the
//! same headers as `GET`, `Content-Length` included, without the body.

use poem::Response;
use poem::http::{Method, header};

/// The helper module's source.
pub(crate) const HELPER: &str = include_str!("../../clients/js/avemint.js");

/// The path the helper is served at.
pub(crate) const PATH: &str = avemint_base::route::Route::SpaHelper.path();

/// Browsers may cache the helper for an hour (it changes only with an avemint release).
const CACHE_CONTROL: &str = "public, max-age=3600";

fn helper(method: &Method) -> Response {
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "text/javascript; charset=utf-8")
        .header(header::CACHE_CONTROL, CACHE_CONTROL);
    if method == Method::HEAD {
        builder.header(header::CONTENT_LENGTH, HELPER.len()).finish()
    } else {
        builder.body(HELPER)
    }
}

/// The helper for `GET` and `HEAD /avemint.js`; `None` for any other request.
pub(crate) fn handle(method: &Method, path: &str) -> Option<Response> {
    (path == PATH && matches!(*method, Method::GET | Method::HEAD)).then(|| helper(method))
}
