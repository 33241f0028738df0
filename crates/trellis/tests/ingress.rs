//! `trellis ingress` in a 2-node lab, reached from outside (curl in the underlay) on the
//! edge node's address: Ingress and HTTPRoute matching, filters, weights, status, the
//! 404/503 answers, bad input refused naming the field, Secret access by role.

mod common;

use std::collections::BTreeMap;

use common::ingress::{cert_for, ingress_lab, tls_secret, IngressLab, EDGE};
use common::trellis;

fn backend(svc: &str) -> String {
    format!("{{service: {{name: {svc}, port: {{number: 80}}}}}}")
}

/// Count which pods answer `n` requests.
fn spread(l: &IngressLab, host: &str, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    // One curl, many requests over keep-alive: `--next`-free, by URL globbing.
    let url = format!("http://{EDGE}{path}?[1-{n}]");
    let h = format!("Host: {host}");
    let u = l.lab.state.underlay.clone();
    let out = l.lab.exec_any(&u, &["curl", "-s", "-H", &h, &url]).unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        *m.entry(v["pod"].as_str().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn ingress_routes_filters_and_errors() {
    let l = ingress_lab(&[
        "--publish-address",
        EDGE,
        "--health-check-path",
        "/health",
        "--health-check-interval",
        "0.3",
    ]);

    // An Ingress as kubectl would send it: hosts, Exact/Prefix, defaultBackend.
    l.apply(&format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: default}}
spec:
  ingressClassName: trellis
  defaultBackend: {}
  rules:
  - host: shop.test
    http:
      paths:
      - {{path: /foo, pathType: Exact, backend: {}}}
      - {{path: /foo/, pathType: Prefix, backend: {}}}
      - {{path: /, pathType: ImplementationSpecific, backend: {}}}
  - host: '*.wild.test'
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {}}}
",
        backend("b"),
        backend("a"),
        backend("b"),
        backend("a"),
        backend("b")
    ))
    .unwrap();
    l.wait_route("shop.test", "/foo", "a");
    for (host, path, want) in [
        ("shop.test", "/foo", "a"),
        ("shop.test", "/foo/", "b"),
        ("shop.test", "/foo/bar", "b"),
        ("shop.test", "/foobar", "a"),
        ("shop.test", "/FOO", "a"),
        ("x.wild.test", "/", "b"),
        ("y.x.wild.test", "/", "b"), // no rule: the default backend (b)
        ("other.test", "/anything", "b"),
    ] {
        let a = l.get(host, path, &[]);
        assert_eq!(a.status, 200, "{host}{path}: {a:?}");
        assert!(
            a.pod().starts_with(want),
            "{host}{path}: wanted {want}, got {}",
            a.pod()
        );
    }
    // X-Forwarded-* and the pod sees the original host.
    let a = l.get("shop.test", "/foo", &[]).json();
    assert_eq!(a["host"], "shop.test");
    assert_eq!(a["headers"]["x-forwarded-proto"], "http");
    assert_eq!(a["headers"]["x-forwarded-host"], "shop.test");
    assert_eq!(a["headers"]["x-forwarded-for"], "192.168.77.1");
    // Status shows where it is served.
    assert!(
        common::wait_for_text(
            || l.lab
                .cli(&trellis(), &["get", "ingress", "web", "-o", "json"])
                .unwrap_or_default(),
            EDGE
        ),
        "status.loadBalancer has {EDGE}"
    );

    // HTTPRoute: every match kind.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  hostnames: [api.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /one}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: Exact, value: /one/}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: RegularExpression, value: '/re/[0-9]+'}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /h}, headers: [{name: X-Canary, value: 'yes'}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /h}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /q}, queryParams: [{name: v, value: '2'}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /q}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /m}, method: POST}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /m}}]
    backendRefs: [{name: a, port: 80}]
",
    )
    .unwrap();
    l.wait_route("api.test", "/one", "a");
    for (path, args, want) in [
        ("/one", vec![], "a"),
        ("/one/", vec![], "b"),
        ("/one/two", vec![], "a"),
        ("/onetwo", vec![], "404"),
        ("/One", vec![], "404"),
        ("/re/42", vec![], "b"),
        ("/re/4x", vec![], "404"),
        ("/h", vec!["-H", "X-Canary: yes"], "b"),
        ("/h", vec!["-H", "X-Canary: no"], "a"),
        ("/q?v=2", vec![], "b"),
        ("/q?v=3", vec![], "a"),
        ("/m", vec!["-X", "POST"], "b"),
        ("/m", vec![], "a"),
    ] {
        let a = l.get("api.test", path, &args);
        let got = if a.status == 200 {
            a.pod()
        } else {
            a.status.to_string()
        };
        assert!(
            got.starts_with(want),
            "api.test{path} {args:?}: wanted {want}, got {got} ({a:?})"
        );
    }
    // The default backend belongs to Ingress hosts only when no route host matches:
    // api.test has routes, so /onetwo is a 404 with a clear body.
    let a = l.get("api.test", "/onetwo", &[]);
    assert!(a.body.contains("no route for host \"api.test\""), "{a:?}");

    // Filters: header changes, rewrite, redirect.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  hostnames: [f.test]
  rules:
  - matches: [{path: {value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: s}], add: [{name: X-Add, value: a}], remove: [X-Drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Resp, value: r}]}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: new.test, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /here}}
  - matches: [{path: {value: /port}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {port: 8443, statusCode: 307}
  - matches: [{path: {value: /see}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /other}, statusCode: 303}
  - matches: [{path: {value: /perm}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 308, hostname: p.test}
  - matches: [{path: {value: /found}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: f2.test}
",
    )
    .unwrap();
    l.wait_route("f.test", "/hdr", "a");
    let a = l.get("f.test", "/hdr", &["-H", "X-Drop: 1", "-H", "X-Set: old"]);
    let j = a.json();
    assert_eq!(j["headers"]["x-set"], "s");
    assert_eq!(j["headers"]["x-add"], "a");
    assert!(j["headers"].get("x-drop").is_none(), "{j}");
    assert_eq!(a.header("x-resp"), Some("r"));
    let j = l.get("f.test", "/old/x?k=v", &[]).json();
    assert_eq!(j["path"], "/new/x?k=v");
    assert_eq!(j["host"], "internal.test");
    assert_eq!(
        l.get("f.test", "/full/a/b", &[]).json()["path"],
        "/replaced"
    );
    for (path, status, location) in [
        ("/moved/x?q=1", 301, "https://new.test/here/x?q=1"),
        ("/port", 307, "http://f.test:8443/port"),
        ("/see", 303, "http://f.test/other"),
        ("/perm", 308, "http://p.test/perm"),
        ("/found", 302, "http://f2.test/found"),
    ] {
        let a = l.get("f.test", path, &[]);
        assert_eq!(a.status, status, "{path}: {a:?}");
        assert_eq!(a.header("location"), Some(location), "{path}");
    }

    // Weights within ±5% over 1,000 requests.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: default}
spec:
  hostnames: [canary.test]
  rules:
  - backendRefs: [{name: a, port: 80, weight: 80}, {name: b, port: 80, weight: 20}]
",
    )
    .unwrap();
    l.wait_route("canary.test", "/", "");
    let m = spread(&l, "canary.test", "/", 1000);
    let a: usize = m
        .iter()
        .filter(|(k, _)| k.starts_with('a'))
        .map(|(_, v)| v)
        .sum();
    let b: usize = m
        .iter()
        .filter(|(k, _)| k.starts_with('b'))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(a + b, 1000, "{m:?}");
    assert!((760..=840).contains(&a), "80% ±5% to a: {m:?}");
    // Round-robin over both pods of a service.
    assert!(
        m.get("a1").copied().unwrap_or(0) > 300 && m.get("a2").copied().unwrap_or(0) > 300,
        "{m:?}"
    );

    // Session persistence: one cookie, one pod.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: sticky, namespace: default}
spec:
  hostnames: [sticky.test]
  rules:
  - backendRefs: [{name: a, port: 80}]
    sessionPersistence: {sessionName: pin, type: Cookie}
",
    )
    .unwrap();
    l.wait_route("sticky.test", "/", "a");
    let first = l.get("sticky.test", "/", &[]);
    let set = first
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let pair = set.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        assert_eq!(
            l.get("sticky.test", "/", &["-H", &format!("Cookie: {pair}")])
                .pod(),
            first.pod()
        );
    }

    // Active health checks: a1 failing its /health gets no requests until it recovers.
    let sick = l.lab.echo_health_file("a1");
    std::fs::write(&sick, "").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let m = spread(&l, "canary.test", "/", 200);
    assert_eq!(m.get("a1"), None, "a1 fails its health check: {m:?}");
    assert!(m.get("a2").copied().unwrap_or(0) > 100, "{m:?}");
    std::fs::remove_file(&sick).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let m = spread(&l, "canary.test", "/", 200);
    assert!(m.get("a1").copied().unwrap_or(0) > 30, "a1 is back: {m:?}");

    // One JSON access-log line per request, naming the route and the endpoint.
    let log = std::fs::read_to_string(l.lab.dir().join("ingress-edge.log")).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["host"] == "sticky.test")
        .expect("an access log line for sticky.test");
    assert_eq!(line["route"], "httproute default/sticky rule 0");
    assert_eq!(line["status"], 200);
    assert!(
        line["upstream"]
            .as_str()
            .is_some_and(|u| u.ends_with(":8080")),
        "{line}"
    );
    assert_eq!(line["client"], "192.168.77.1");

    // 503 with a clear body for a Service without ready endpoints.
    l.apply(
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  selector: {app: none}\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: empty, namespace: default}\nspec:\n  hostnames: [empty.test]\n  rules: [{backendRefs: [{name: empty, port: 80}]}]\n",
    )
    .unwrap();
    l.wait_route("empty.test", "/", "503");
    let a = l.get("empty.test", "/", &[]);
    assert!(
        a.body
            .contains("service default/empty has no ready endpoint"),
        "{a:?}"
    );

    // Retries: a 503 from the pod is retried on the other endpoint for GET.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: retry, namespace: default}\nspec:\n  hostnames: [retry.test]\n  rules: [{backendRefs: [{name: a, port: 80}], retry: {codes: [503], attempts: 1}}]\n",
    )
    .unwrap();
    l.wait_route("retry.test", "/", "a");
    // /fail-on/a1 answers 503 from a1 only: every GET ends 200 from a2 (without the
    // retry, round-robin would hand a1 its share until it is ejected).
    for _ in 0..20 {
        let a = l.get("retry.test", "/fail-on/a1", &[]);
        assert_eq!((a.status, a.pod().as_str()), (200, "a2"), "{a:?}");
    }
    // /status/503 answers 503 from every pod: the retry fails too, and the 503 comes back.
    let a = l.get("retry.test", "/status/503", &[]);
    assert_eq!(a.status, 503);

    // Rate limit per client: 429 past the limit.
    l.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: limited, namespace: default, annotations: {trellis.io/limit-rps: '5'}}\nspec:\n  hostnames: [limited.test]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n",
    )
    .unwrap();
    l.wait_route("limited.test", "/", "a");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let m = spread(&l, "limited.test", "/", 20);
    let ok: usize = m
        .iter()
        .filter(|(k, _)| k.starts_with('a'))
        .map(|(_, v)| v)
        .sum();
    assert!((4..=7).contains(&ok), "5 rps: {m:?}");
    let a = l.get("limited.test", "/", &[]);
    assert_eq!(a.status, 429, "{a:?}");

    // Bad input: refused naming the field; nothing stored.
    let bad = [
        (
            format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad1, namespace: default}}\nspec:\n  rules: [{{http: {{paths: [{{path: /, pathType: Regex, backend: {}}}]}}}}]\n", backend("a")),
            "spec.rules[0].http.paths[0].pathType",
        ),
        (
            format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad2, namespace: default}}\nspec:\n  rules: [{{http: {{paths: [{{path: api, pathType: Prefix, backend: {}}}]}}}}]\n", backend("a")),
            "spec.rules[0].http.paths[0].path",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad3, namespace: default}\nspec:\n  defaultBackend: {service: {name: a, port: {number: 81}}}\n".to_string(),
            "spec.defaultBackend.service.port.number: Service default/a has no port 81",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad4, namespace: default}\nspec:\n  rules: [{backendRefs: [{name: a, port: 8080}]}]\n".to_string(),
            "spec.rules[0].backendRefs[0].port: Service default/a has no port 8080",
        ),
    ];
    for (m, field) in bad {
        let e = l.apply(&m).unwrap_err();
        assert!(e.contains(field), "wanted {field}, got {e}");
    }
    let dir = l.lab.dir();
    let (crt, key) = cert_for(&dir, "one", &["one.test"]);
    let (_, other_key) = cert_for(&dir, "two", &["two.test"]);
    let e = l
        .apply(&tls_secret("mismatch", &crt, &other_key))
        .unwrap_err();
    assert!(
        e.contains("data[\"tls.key\"]: does not match the certificate"),
        "{e}"
    );
    let e = l
        .apply(&tls_secret("garbage", "not a certificate", &key))
        .unwrap_err();
    assert!(e.contains("data[\"tls.crt\"]"), "{e}");
    let listed: String = ["ingresses", "httproutes", "secrets"]
        .iter()
        .map(|k| l.lab.cli(&trellis(), &["get", k]).unwrap())
        .collect();
    for name in ["bad1", "bad2", "bad3", "bad4", "mismatch", "garbage"] {
        assert!(!listed.contains(name), "{name} was stored: {listed}");
    }
    l.apply(&tls_secret("good", &crt, &key)).unwrap();
    // `get` prints no secret value.
    let table = l.lab.cli(&trellis(), &["get", "secret", "good"]).unwrap();
    assert!(
        table.contains("kubernetes.io/tls") && !table.contains("LS0t"),
        "{table}"
    );
}

/// The source documents' chain: outside client → NodePort → ingress (itself a pod) →
/// application pods. The ingress pod reaches the API server like any pod; the client
/// reaches it through another node's port.
#[test]
fn ingress_behind_a_node_port() {
    let mut l = ingress_lab(&[]);
    let pod = l.lab.add_pod(1, "edge-pod").unwrap();
    l.lab
        .cni_add_pod_to(&common::plugin(), &pod.netns, "LABELS=app=ingress", None)
        .unwrap();
    let cmd = l
        .lab
        .ingress_command(
            &trellis(),
            "in-pod",
            "0.0.0.0:8080".parse().unwrap(),
            None,
            &[],
        )
        .unwrap();
    l.lab.spawn(&pod.netns, "ingress in-pod", cmd).unwrap();
    l.lab
        .wait_port(
            &pod.netns,
            "127.0.0.1:8080".parse().unwrap(),
            "ingress in-pod",
        )
        .unwrap();
    l.apply(
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: ingress, namespace: default}\nspec:\n  type: NodePort\n  selector: {app: ingress}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n",
    )
    .unwrap();
    l.apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: chain, namespace: default}}\nspec:\n  rules: [{{host: chain.test, http: {{paths: [{{path: /, pathType: Prefix, backend: {}}}]}}}}]\n",
        backend("b")
    ))
    .unwrap();
    // Through node n1's port (the ingress pod runs on n2).
    let u = l.lab.state.underlay.clone();
    let url = "http://192.168.77.11:30080/chain";
    let mut last = String::new();
    let ok = trellis_lab::wait_for(std::time::Duration::from_secs(20), || {
        let out = l
            .lab
            .exec_any(
                &u,
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "2",
                    "-H",
                    "Host: chain.test",
                    url,
                ],
            )
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str::<serde_json::Value>(&last)
            .is_ok_and(|v| v["pod"].as_str().is_some_and(|p| p.starts_with('b')))
    });
    assert!(ok, "outside → NodePort → ingress pod → b pods: {last}");
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["path"], "/chain");
    assert_eq!(v["headers"]["x-forwarded-host"], "chain.test");
}
