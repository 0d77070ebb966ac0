//! How an upstream framework may read a proxied path: small reference normalisers that the path check
//! (`settings::check_rest`) is tested against, by its property test and by the `proxy_path` fuzz target. Not used
//! when serving.

use percent_encoding::percent_decode_str;

/// A way of reading a path before resolving its dot segments.
type Normaliser = fn(&str) -> String;

/// The readings: as sent; decoded once; decoded until it stops changing (IIS and others decode twice); Tomcat's
/// (`;…` removed from each segment, then decoded); decoded, then `;…` removed; backslash as slash; each segment
/// trimmed of white space and the path cut at NUL; NFKC's dots; and all of them at once.
const NORMALISERS: [(&str, Normaliser); 9] = [
    ("as sent", |p| p.to_owned()),
    ("one decode", decode_once),
    ("repeated decode", decode_all),
    ("Tomcat's `;` rule", |p| decode_once(&strip_params(p))),
    ("decode, then `;` rule", |p| strip_params(&decode_all(p))),
    ("backslash as slash", |p| decode_all(p).replace('\\', "/")),
    ("trim, cut at NUL", |p| trim_segments(&cut_at_nul(&decode_all(p)))),
    ("NFKC dots", |p| nfkc_dots(&decode_all(p))),
    ("all at once", |p| {
        let decoded = nfkc_dots(&cut_at_nul(&decode_all(p))).replace('\\', "/");
        trim_segments(&strip_params(&decoded))
    }),
];

fn decode_once(path: &str) -> String {
    percent_decode_str(path).decode_utf8_lossy().into_owned()
}

fn decode_all(path: &str) -> String {
    let mut current = path.to_owned();
    // Each decoding that changes the text shortens it: this ends.
    loop {
        let next = decode_once(&current);
        if next == current {
            return current;
        }
        current = next;
    }
}

fn strip_params(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect();
    segments.join("/")
}

fn trim_segments(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| s.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
        .collect();
    segments.join("/")
}

fn cut_at_nul(path: &str) -> String {
    path.split('\0').next().unwrap_or_default().to_owned()
}

fn nfkc_dots(path: &str) -> String {
    path.replace(['\u{ff0e}', '\u{fe52}', '\u{2024}'], ".")
}

/// The segments of `path` after RFC 3986 dot-segment removal (`..` at the root stays at the root).
fn resolve(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// The first reading under which `path` is not `prefix` or below it: the normaliser's name and what it resolved
/// `path` to. `None`: every reading stays below `prefix` (a path without dot segments, such as `/v1`).
pub fn escape(prefix: &str, path: &str) -> Option<(&'static str, String)> {
    let prefix = resolve(prefix);
    NORMALISERS.iter().find_map(|(name, normalise)| {
        let read = normalise(path);
        let resolved = resolve(&read);
        (!resolved.starts_with(&prefix)).then(|| (*name, format!("/{}", resolved.join("/"))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reading_catches_its_spelling() {
        assert_eq!(escape("/v1", "/v1/a/b"), None);
        assert_eq!(escape("/v1", "/v1/a/../b"), None);
        for (path, by) in [
            ("/v1/../admin", "as sent"),
            ("/v1/%2e%2e/admin", "one decode"),
            ("/v1/%252e%252e/admin", "repeated decode"),
            ("/v1/..;/admin", "Tomcat's `;` rule"),
            ("/v1/..%3b/admin", "decode, then `;` rule"),
            ("/v1/..\\admin", "backslash as slash"),
            ("/v1/%20../admin", "trim, cut at NUL"),
            ("/v1/%ef%bc%8e%ef%bc%8e/admin", "NFKC dots"),
            ("/v1/%20..;/admin", "all at once"),
        ] {
            assert_eq!(escape("/v1", path).map(|(n, _)| n), Some(by), "{path}");
        }
    }
}
