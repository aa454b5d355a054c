//! `http.route` for SERVER spans and metrics. The agent never sees the application's router,
//! so it derives a low-cardinality route from the path: segments that look like identifiers
//! (numbers, UUIDs, long hex, base64-style tokens) become `{id}`, so `/users/42` and
//! `/users/43` share the route `/users/{id}` and one metric series. Route patterns the user
//! configures (`--route /orders/{order}/items/*`) are tried first and win.

use std::cell::RefCell;

use foldhash::HashMap;
use smol_str::{SmolStr, SmolStrBuilder};
use thiserror::Error;

/// The placeholder an identifier-like segment becomes.
pub const ID: &str = "{id}";

/// Segments kept before the rest of a long path collapses into `/*`: bounds the route length
/// and the number of distinct routes deep, generated paths can produce.
const MAX_SEGMENTS: usize = 8;

/// A route pattern that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("route pattern {0:?} must start with '/'")]
    NotAbsolute(String),
    #[error("route pattern {0:?}: '*' may only be the last segment")]
    WildcardNotLast(String),
    #[error("route pattern {0:?}: a placeholder must be a whole segment, like {{id}}")]
    PartialPlaceholder(String),
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one segment.
    Any,
    /// `*` as the last segment: the rest of the path, one or more segments.
    Rest,
}

/// A user route pattern: `/users/{id}`, `/static/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: SmolStr,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let trimmed = text.trim();
        let Some(rest) = trimmed.strip_prefix('/') else {
            return Err(PatternError::NotAbsolute(text.into()));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = if *p == "*" {
                if i + 1 != parts.len() {
                    return Err(PatternError::WildcardNotLast(text.into()));
                }
                Segment::Rest
            } else if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
                Segment::Any
            } else if p.contains('{') || p.contains('}') {
                return Err(PatternError::PartialPlaceholder(text.into()));
            } else {
                Segment::Literal((*p).to_string())
            };
            segments.push(seg);
        }
        Ok(Pattern {
            text: SmolStr::new(trimmed),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        let path_is_root = path.trim_start_matches('/').is_empty();
        for seg in &self.segments {
            match seg {
                Segment::Rest => return !path_is_root && parts.next().is_some(),
                Segment::Any => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => match parts.next() {
                    Some(p) if p == l => {}
                    _ => return false,
                },
            }
        }
        if self.segments.is_empty() {
            return path_is_root;
        }
        parts.next().is_none()
    }
}

/// Paths whose routes are remembered; the memory is emptied when full.
const CACHED_PATHS: usize = 1024;
/// Longer paths are not remembered (they bound the memory: 1024 of 64 bytes at most).
const CACHED_PATH_BYTES: usize = 64;

/// The route settings: user patterns, then the heuristic.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    patterns: Vec<Pattern>,
    /// Routes of recent paths. A service serves a few paths over and over, and finding a path
    /// again costs a quarter of deriving its route (which was ~3% of the agent's work per
    /// request). One per linker, on the processing task: not shared between threads.
    recent: RefCell<HashMap<SmolStr, SmolStr>>,
}

impl Routes {
    pub fn new(patterns: Vec<Pattern>) -> Self {
        Routes {
            patterns,
            recent: RefCell::default(),
        }
    }

    /// Parses pattern texts, failing on the first bad one.
    pub fn parse(texts: &[String]) -> Result<Self, PatternError> {
        texts
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<Result<_, _>>()
            .map(Routes::new)
    }

    /// The route of a request path (without its query).
    pub fn route(&self, path: &str) -> SmolStr {
        if path.len() > CACHED_PATH_BYTES {
            return self.derive(path);
        }
        let mut recent = self.recent.borrow_mut();
        if let Some(route) = recent.get(path) {
            return route.clone();
        }
        let route = self.derive(path);
        if recent.len() >= CACHED_PATHS {
            recent.clear();
        }
        recent.insert(SmolStr::new(path), route.clone());
        route
    }

    /// The route of a path: the first user pattern it matches, else the heuristic's.
    fn derive(&self, path: &str) -> SmolStr {
        if let Some(p) = self.patterns.iter().find(|p| p.matches(path)) {
            return p.text.clone();
        }
        reduce(path)
    }
}

/// The heuristic route of a path. Built in place: most routes fit a `SmolStr` inline, and this
/// runs once per SERVER span.
pub fn reduce(path: &str) -> SmolStr {
    let mut out = SmolStrBuilder::new();
    for (i, seg) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/*");
            break;
        }
        out.push('/');
        if looks_like_id(seg) {
            out.push_str(ID);
        } else {
            out.push_str(seg);
        }
    }
    // The root, or a trailing slash the path had (a different resource to many routers).
    if out.is_empty() || (path.ends_with('/') && !out.as_str().ends_with("/*")) {
        out.push('/');
    }
    out.finish()
}

/// Whether a path segment is an identifier rather than a name.
fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    // Long hex: object ids, hashes, hex-encoded keys (at least one digit, so that words made of
    // a-f letters, like "facade", stay).
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Tokens: base64/base64url, long, mixing letters and digits.
    let token_chars = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'+'));
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if token_chars && b.len() >= 16 && digits > 0 && letters > 0 {
        return true;
    }
    // Numbers with a separator or unit: 2024-06-01, 1.5, 42ms.
    token_chars && digits * 2 > b.len() && b.len() > 3
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_placeholders() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7", "/users/{id}/orders/{id}"),
            ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{id}"),
            ("/blobs/5f2b9c0e1d3a4b6c", "/blobs/{id}"),
            ("/s/dGhpcyBpcyBhIHRva2VuMTIz", "/s/{id}"),
            ("/archive/2024-06-01", "/archive/{id}"),
            ("/api/v1/health", "/api/v1/health"),
            ("/cafe/facade", "/cafe/facade"),
            ("/static/app.js", "/static/app.js"),
            ("/users/", "/users/"),
            ("//double//slash", "/double/slash"),
        ];
        for (path, route) in cases {
            assert_eq!(reduce(path), route, "{path}");
        }
    }

    #[test]
    fn deep_paths_are_bounded() {
        let r = reduce("/a/b/c/d/e/f/g/h/i/j/k");
        assert_eq!(r, "/a/b/c/d/e/f/g/h/*");
    }

    #[test]
    fn user_patterns_win() {
        let routes = Routes::parse(&[
            "/orders/{order}/items/*".into(),
            "/users/{name}".into(),
            "/".into(),
        ])
        .unwrap();
        assert_eq!(routes.route("/users/alice"), "/users/{name}");
        assert_eq!(routes.route("/users/42"), "/users/{name}");
        assert_eq!(
            routes.route("/orders/9/items/3/x"),
            "/orders/{order}/items/*"
        );
        assert_eq!(routes.route("/orders/9/items"), "/orders/{id}/items");
        assert_eq!(routes.route("/users/alice/photos"), "/users/alice/photos");
        assert_eq!(routes.route("/"), "/");
        assert_eq!(routes.route("/users/"), "/users/");
    }

    #[test]
    fn remembered_routes_are_the_derived_ones_and_bounded() {
        let routes = Routes::parse(&["/users/{name}".into()]).unwrap();
        let long = format!("/files/{}", "a".repeat(CACHED_PATH_BYTES));
        for _ in 0..2 {
            assert_eq!(routes.route("/users/alice"), "/users/{name}");
            assert_eq!(routes.route("/orders/42"), "/orders/{id}");
            assert_eq!(routes.route(&long), reduce(&long));
        }
        assert_eq!(routes.recent.borrow().len(), 2, "long paths are not kept");
        for i in 0..CACHED_PATHS * 2 {
            let path = format!("/p{i}");
            assert_eq!(routes.route(&path), reduce(&path));
        }
        assert!(routes.recent.borrow().len() <= CACHED_PATHS);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            Pattern::parse("users/{id}"),
            Err(PatternError::NotAbsolute(_))
        ));
        assert!(matches!(
            Pattern::parse("/a/*/b"),
            Err(PatternError::WildcardNotLast(_))
        ));
        assert!(matches!(
            Pattern::parse("/a/x{id}"),
            Err(PatternError::PartialPlaceholder(_))
        ));
    }
}
