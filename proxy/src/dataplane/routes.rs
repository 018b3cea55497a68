//! Path routes: the services of one app (`[[app.routes]]`), each with its
//! own pools per color, chosen by the longest path prefix.
//!
//! Flow per request: the app's [`AppRoute::color_for`] decides the color
//! once (live, split and sticky bucket, or a preview / color host), then
//! [`PathRoutes::find`] picks the service by path and that service's pool of
//! that color takes the request. So every service of an app is on the same
//! color for one client: a switch, a rollout step or a rollback moves them
//! all at once, because they all live in the app's one [`AppRoute`] in the
//! one snapshot. A path matching no route goes to the app's own pools.
//!
//! Matching is allocation-free: the routes are sorted by prefix length,
//! longest first, and the first whose prefix starts the path wins. Only a
//! route with `strip_prefix` builds a new request target ([`strip`]).
//!
//! [`AppRoute::color_for`]: crate::dataplane::routing::AppRoute::color_for

use std::sync::Arc;

use bgproxy_control::api::Color;

use pingora::http::RequestHeader;

use crate::config::RouteConfig;
use crate::dataplane::routing::{AppRoute, Pool};

/// One service of an app, behind a path prefix.
#[derive(Debug)]
pub struct PathRoute {
    /// The route's name, as configured.
    pub name: Arc<str>,
    /// The path prefix it serves (starts with `/`).
    pub prefix: Box<str>,
    /// Forward the path without `prefix`.
    pub strip: bool,
    /// Pools indexed by [`Color::index`]; shared by `Arc` between
    /// snapshots, like the app's own.
    pub pools: [Arc<Pool>; 2],
    /// The route's config as of this snapshot (health settings, upstreams).
    pub config: Arc<RouteConfig>,
}

impl PathRoute {
    /// The pool of one color.
    pub fn pool(&self, color: Color) -> &Arc<Pool> {
        &self.pools[color.index()]
    }
}

/// An app's routes, longest prefix first.
#[derive(Debug, Default)]
pub struct PathRoutes {
    sorted: Box<[PathRoute]>,
}

impl PathRoutes {
    /// The table of `routes` (in any order; prefixes validated unique).
    pub fn new(mut routes: Vec<PathRoute>) -> PathRoutes {
        // Stable: equal lengths keep their configured order (prefixes are
        // unique, so at most one of them can match anyway).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        PathRoutes {
            sorted: routes.into_boxed_slice(),
        }
    }

    /// The index of the route serving `path` (the request's path, without
    /// query): the longest prefix of it. `None`: the app's own pools.
    #[inline]
    pub fn find(&self, path: &str) -> Option<usize> {
        self.sorted
            .iter()
            .position(|r| path.as_bytes().starts_with(r.prefix.as_bytes()))
    }

    /// The route at `index` (from [`PathRoutes::find`]).
    pub fn get(&self, index: usize) -> Option<&PathRoute> {
        self.sorted.get(index)
    }

    /// Every route, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &PathRoute> {
        self.sorted.iter()
    }

    /// The route named `name`.
    pub fn by_name(&self, name: &str) -> Option<&PathRoute> {
        self.sorted.iter().find(|r| &*r.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// The request target without `prefix`: `/api/v2/items?q=1` with prefix
/// `/api/v2/` is `/items?q=1`, `/api/v2/` is `/`; the rest always starts
/// with `/` (`/apix` with prefix `/api` is `/x`). A target that does not
/// start with `prefix` is returned as it is.
pub fn strip(path_and_query: &str, prefix: &str) -> String {
    let Some(rest) = path_and_query.strip_prefix(prefix) else {
        return path_and_query.to_string();
    };
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// `uri` with its path stripped of `prefix` ([`strip`]), scheme and
/// authority kept; `None` when the result is not a valid URI (it always is
/// for a valid one, but client input is never trusted to be).
pub fn stripped_uri(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(strip(target, prefix).parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Whether [`rewrite`] may change the target: the route at `path_route`
/// strips its prefix.
pub fn strips(app: &AppRoute, path_route: Option<usize>) -> bool {
    stripping(app, path_route).is_some()
}

/// The route at `path_route`, when it strips its prefix.
fn stripping(app: &AppRoute, path_route: Option<usize>) -> Option<&PathRoute> {
    path_route
        .and_then(|i| app.paths.get(i))
        .filter(|r| r.strip)
}

/// Before the request goes upstream: the target without the prefix when
/// the route at `path_route` of `app` strips it. Nothing for the app's own
/// pools or a route without `strip_prefix`.
pub fn rewrite(app: &AppRoute, path_route: Option<usize>, req: &mut RequestHeader) {
    let Some(route) = stripping(app, path_route) else {
        return;
    };
    if let Some(uri) = stripped_uri(&req.uri, &route.prefix) {
        req.set_uri(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PoolMetrics;

    fn route(name: &str, prefix: &str) -> PathRoute {
        let pool = || Arc::new(Pool::new(Color::Blue, Vec::new(), PoolMetrics::detached()));
        PathRoute {
            name: name.into(),
            prefix: prefix.into(),
            strip: false,
            pools: [pool(), pool()],
            config: Arc::new(RouteConfig {
                name: name.into(),
                path_prefix: prefix.into(),
                strip_prefix: false,
                health: Default::default(),
                pools: [Vec::new(), Vec::new()],
            }),
        }
    }

    fn name<'a>(t: &'a PathRoutes, path: &str) -> Option<&'a str> {
        t.find(path).and_then(|i| t.get(i)).map(|r| &*r.name)
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let t = PathRoutes::new(vec![
            route("api", "/api/"),
            route("v2", "/api/v2/"),
            route("static", "/static"),
        ]);
        assert_eq!(name(&t, "/api/v2/items"), Some("v2"));
        assert_eq!(name(&t, "/api/v2/"), Some("v2"));
        assert_eq!(name(&t, "/api/v2"), Some("api"), "no trailing slash");
        assert_eq!(name(&t, "/api/v1/x"), Some("api"));
        assert_eq!(name(&t, "/api"), None, "the app's own pools");
        assert_eq!(name(&t, "/"), None);
        assert_eq!(name(&t, "/staticx"), Some("static"), "byte-wise prefix");
        assert_eq!(name(&t, "/API/x"), None, "case matters, as in the path");
        assert_eq!(
            t.iter().map(|r| &*r.name).collect::<Vec<_>>(),
            ["v2", "static", "api"]
        );
        assert!(t.by_name("api").is_some() && t.by_name("web").is_none());
        assert_eq!(PathRoutes::default().find("/api/"), None);
        let root = PathRoutes::new(vec![route("all", "/"), route("api", "/api/")]);
        assert_eq!(name(&root, "/api/x"), Some("api"));
        assert_eq!(name(&root, "/x"), Some("all"));
    }

    #[test]
    fn strip_keeps_a_leading_slash_and_the_query() {
        assert_eq!(strip("/api/v2/items?q=1", "/api/v2/"), "/items?q=1");
        assert_eq!(strip("/api/v2/", "/api/v2/"), "/");
        assert_eq!(strip("/api/v2/?q=1", "/api/v2/"), "/?q=1");
        assert_eq!(strip("/api/items", "/api"), "/items");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/apix", "/api"), "/x");
        assert_eq!(strip("/other", "/api/"), "/other", "not under the prefix");
        assert_eq!(strip("/a/b", "/"), "/a/b");
    }

    #[test]
    fn stripped_uri_keeps_scheme_and_authority() {
        let u: http::Uri = "http://shop.test/api/v2/items?q=1".parse().unwrap();
        let s = stripped_uri(&u, "/api/v2/").unwrap();
        assert_eq!(s.to_string(), "http://shop.test/items?q=1");
        let u: http::Uri = "/api/v2/".parse().unwrap();
        assert_eq!(stripped_uri(&u, "/api/v2/").unwrap().to_string(), "/");
    }
}
