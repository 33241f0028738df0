use std::collections::HashMap;

use serde_json::json;
use trellis_api::objects::{AnyObject, Endpoint, HttpRoute, Ingress, Secret, Service};

use super::*;

fn obj(v: serde_json::Value) -> AnyObject {
    AnyObject::from_value(v).unwrap()
}

fn svc(name: &str, port: u16, app: &str) -> Service {
    let AnyObject::Service(s) = obj(json!({
        "apiVersion": "trellis/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}
    })) else {
        unreachable!()
    };
    s
}

fn ep(name: &str, app: &str, ip: &str) -> Endpoint {
    let AnyObject::Endpoint(e) = obj(json!({
        "apiVersion": "trellis/v1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"containerId": name, "ifname": "eth0", "network": "pods", "node": "n1", "ip": ip, "ready": true}
    })) else {
        unreachable!()
    };
    e
}

fn ingress(name: &str, ts: &str, spec: serde_json::Value) -> Ingress {
    let AnyObject::Ingress(i) = obj(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts}, "spec": spec
    })) else {
        unreachable!()
    };
    i
}

fn route(name: &str, spec: serde_json::Value) -> HttpRoute {
    let AnyObject::HttpRoute(r) = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec
    })) else {
        unreachable!()
    };
    r
}

struct World {
    ingresses: Vec<Ingress>,
    routes: Vec<HttpRoute>,
    services: Vec<Service>,
    endpoints: Vec<Endpoint>,
    secrets: Vec<Secret>,
}

impl World {
    fn new() -> Self {
        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        for (i, app) in ["a", "b", "c", "d"].iter().enumerate() {
            services.push(svc(app, 80, app));
            endpoints.push(ep(app, app, &format!("10.0.0.{}", i + 1)));
        }
        World {
            ingresses: vec![],
            routes: vec![],
            services,
            endpoints,
            secrets: vec![],
        }
    }

    fn table(&self) -> Table {
        let i: Vec<&Ingress> = self.ingresses.iter().collect();
        let r: Vec<&HttpRoute> = self.routes.iter().collect();
        let s: Vec<&Service> = self.services.iter().collect();
        let e: Vec<&Endpoint> = self.endpoints.iter().collect();
        let x: Vec<&Secret> = self.secrets.iter().collect();
        build(
            Inputs {
                ingresses: &i,
                routes: &r,
                services: &s,
                endpoints: &e,
                secrets: &x,
                class: "trellis",
                default_rate_limit: None,
            },
            &Health::default(),
        )
    }
}

/// The backend service a request lands on (`404` / `default:<svc>`).
fn lands(t: &Table, host: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> String {
    let (path, query) = uri
        .split_once('?')
        .map_or((uri, None), |(p, q)| (p, Some(q)));
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let view = RequestView {
        method: &m,
        path,
        query,
        headers: &h,
    };
    let name = |a: &Action| {
        a.backends
            .first()
            .map(|(_, b)| b.name.split(['/', ':']).nth(1).unwrap().to_string())
            .unwrap_or_else(|| "redirect".into())
    };
    match t.route(host, &view) {
        Lookup::Route(r) => name(&r.action),
        Lookup::Default(a) => format!("default:{}", name(a)),
        Lookup::NotFound => "404".into(),
    }
}

fn backend(svc: &str) -> serde_json::Value {
    json!({"service": {"name": svc, "port": {"number": 80}}})
}

#[test]
fn ingress_exact_and_prefix_follow_the_kubernetes_table() {
    let mut w = World::new();
    w.ingresses.push(ingress(
        "i",
        "2026-01-01T00:00:00Z",
        json!({"rules": [{"host": "x.test", "http": {"paths": [
            {"path": "/foo", "pathType": "Exact", "backend": backend("a")},
            {"path": "/foo/", "pathType": "Prefix", "backend": backend("b")},
            {"path": "/aaa/bb", "pathType": "Prefix", "backend": backend("c")},
            {"path": "/", "pathType": "Prefix", "backend": backend("d")}
        ]}}]}),
    ));
    let t = w.table();
    let cases = [
        ("/foo", "a"),  // Exact beats Prefix /foo/ at the same length
        ("/foo/", "b"), // trailing slash: prefix
        ("/foo/x", "b"),
        ("/FOO", "d"),    // case-sensitive
        ("/foobar", "d"), // not a segment prefix
        ("/aaa/bb", "c"),
        ("/aaa/bb/", "c"),
        ("/aaa/bbb", "d"),
        ("/aaa/b", "d"),
        ("/", "d"),
    ];
    for (path, want) in cases {
        assert_eq!(lands(&t, "x.test", "GET", path, &[]), want, "{path}");
    }
    assert_eq!(lands(&t, "y.test", "GET", "/", &[]), "404");
}

#[test]
fn gateway_prefix_conformance_one_and_onetwo() {
    let mut w = World::new();
    w.routes.push(route(
        "r",
        json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/one"}}], "backendRefs": [{"name": "a", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/one/"}}], "backendRefs": [{"name": "b", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "c", "port": 80}]}
        ]}),
    ));
    let t = w.table();
    for (path, want) in [
        ("/one", "a"),
        ("/one/", "b"),
        ("/one/two", "a"),
        ("/onetwo", "c"),
        ("/One", "c"),
        ("/", "c"),
    ] {
        assert_eq!(lands(&t, "any.test", "GET", path, &[]), want, "{path}");
    }
}

#[test]
fn hosts_exact_then_wildcard_then_any() {
    let mut w = World::new();
    w.ingresses.push(ingress(
        "i",
        "2026-01-01T00:00:00Z",
        json!({"defaultBackend": backend("d"), "rules": [
            {"host": "foo.bar.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("a")}]}},
            {"host": "*.bar.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("b")}]}},
            {"http": {"paths": [{"path": "/only", "pathType": "Exact", "backend": backend("c")}]}}
        ]}),
    ));
    w.routes.push(route(
        "r",
        json!({"hostnames": ["*.gw.com"], "rules": [{"backendRefs": [{"name": "c", "port": 80}]}]}),
    ));
    let t = w.table();
    assert_eq!(lands(&t, "foo.bar.com", "GET", "/", &[]), "a");
    assert_eq!(lands(&t, "baz.bar.com", "GET", "/", &[]), "b");
    // Ingress wildcards are one label; Gateway ones any number.
    assert_eq!(lands(&t, "a.baz.bar.com", "GET", "/only", &[]), "c");
    assert_eq!(lands(&t, "bar.com", "GET", "/x", &[]), "default:d");
    assert_eq!(lands(&t, "a.b.gw.com", "GET", "/", &[]), "c");
    assert_eq!(lands(&t, "gw.com", "GET", "/x", &[]), "default:d");
}

#[test]
fn gateway_precedence_method_headers_query() {
    let mut w = World::new();
    w.routes.push(route(
        "r",
        json!({"hostnames": ["m.test"], "rules": [
            {"matches": [{"path": {"value": "/"}}], "backendRefs": [{"name": "a", "port": 80}]},
            {"matches": [{"path": {"value": "/"}, "method": "POST"}], "backendRefs": [{"name": "b", "port": 80}]},
            {"matches": [{"headers": [{"name": "X-Version", "value": "2"}]}], "backendRefs": [{"name": "c", "port": 80}]},
            {"matches": [{"queryParams": [{"type": "RegularExpression", "name": "id", "value": "[0-9]+"}]}], "backendRefs": [{"name": "d", "port": 80}]}
        ]}),
    ));
    let t = w.table();
    assert_eq!(lands(&t, "m.test", "GET", "/", &[]), "a");
    assert_eq!(lands(&t, "m.test", "POST", "/", &[("x-version", "2")]), "b");
    assert_eq!(lands(&t, "m.test", "GET", "/", &[("X-VERSION", "2")]), "c");
    assert_eq!(lands(&t, "m.test", "GET", "/", &[("x-version", "3")]), "a");
    assert_eq!(lands(&t, "m.test", "GET", "/?a=1&id=42", &[]), "d");
    assert_eq!(lands(&t, "m.test", "GET", "/?id=4x", &[]), "a");
}

#[test]
fn weights_spread_within_a_few_requests() {
    let mut w = World::new();
    w.routes.push(route(
        "r",
        json!({"rules": [{"backendRefs": [
            {"name": "a", "port": 80, "weight": 70},
            {"name": "b", "port": 80, "weight": 20},
            {"name": "c", "port": 80, "weight": 10},
            {"name": "d", "port": 80, "weight": 0}
        ]}]}),
    ));
    let t = w.table();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let m = Method::GET;
    let h = http::HeaderMap::new();
    let view = RequestView {
        method: &m,
        path: "/",
        query: None,
        headers: &h,
    };
    let Lookup::Route(r) = t.route("w.test", &view) else {
        panic!()
    };
    for _ in 0..1000 {
        let b = r.action.pick_backend().unwrap();
        *counts.entry(b.name.clone()).or_default() += 1;
    }
    let got = |s: &str| counts.get(&format!("default/{s}:80")).copied().unwrap_or(0);
    assert!((695..=705).contains(&got("a")), "{counts:?}");
    assert!((195..=205).contains(&got("b")), "{counts:?}");
    assert!((95..=105).contains(&got("c")), "{counts:?}");
    assert_eq!(got("d"), 0);
}

#[test]
fn backends_know_why_they_are_empty() {
    let mut w = World::new();
    w.endpoints.retain(|e| e.name() != "b");
    w.ingresses.push(ingress(
        "i",
        "2026-01-01T00:00:00Z",
        json!({"rules": [{"http": {"paths": [
            {"path": "/b", "pathType": "Prefix", "backend": backend("b")},
            {"path": "/nope", "pathType": "Prefix", "backend": backend("nope")},
            {"path": "/a", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"name": "http"}}}}
        ]}}]}),
    ));
    let t = w.table();
    let m = Method::GET;
    let h = http::HeaderMap::new();
    let at = |p: &str| {
        let v = RequestView {
            method: &m,
            path: p,
            query: None,
            headers: &h,
        };
        let Lookup::Route(r) = t.route("h", &v) else {
            panic!()
        };
        r.action.backends[0].1.clone()
    };
    assert_eq!(
        at("/b").missing.as_deref(),
        Some("service default/b has no ready endpoint")
    );
    assert_eq!(
        at("/nope").missing.as_deref(),
        Some("service default/nope does not exist")
    );
    let a = at("/a");
    assert_eq!(a.upstreams[0].addr.to_string(), "10.0.0.1:8080");
    assert!(a.missing.is_none());
}

#[test]
fn other_classes_are_left_out_and_the_oldest_default_wins() {
    let mut w = World::new();
    w.ingresses.push(ingress(
        "new",
        "2026-02-01T00:00:00Z",
        json!({"defaultBackend": backend("b")}),
    ));
    w.ingresses.push(ingress(
        "old",
        "2026-01-01T00:00:00Z",
        json!({"defaultBackend": backend("a")}),
    ));
    w.ingresses.push(ingress(
        "other",
        "2025-01-01T00:00:00Z",
        json!({"ingressClassName": "nginx", "defaultBackend": backend("c")}),
    ));
    assert_eq!(lands(&w.table(), "h", "GET", "/", &[]), "default:a");
}

#[test]
fn path_changes() {
    let p = PathChange::Prefix("/v2".into());
    assert_eq!(p.apply("/v1/users", Some("/v1")), "/v2/users");
    assert_eq!(p.apply("/v1", Some("/v1")), "/v2");
    let root = PathChange::Prefix("/".into());
    assert_eq!(root.apply("/api/x", Some("/api")), "/x");
    assert_eq!(root.apply("/api", Some("/api")), "/");
    assert_eq!(PathChange::Full("/x".into()).apply("/a/b", None), "/x");
}

#[test]
fn ten_thousand_routes_build_quickly() {
    let mut w = World::new();
    for i in 0..10_000 {
        w.routes.push(route(
            &format!("r{i}"),
            json!({"hostnames": [format!("r{i}.test")], "rules": [{
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Gen", "value": "1"}]}}],
                "backendRefs": [{"name": "a", "port": 80}]}]}),
        ));
    }
    let t0 = std::time::Instant::now();
    let t = w.table();
    let took = t0.elapsed();
    assert_eq!(t.route_count, 10_000);
    assert_eq!(lands(&t, "r9999.test", "GET", "/", &[]), "a");
    eprintln!("10,000 routes built in {took:?}");
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}
