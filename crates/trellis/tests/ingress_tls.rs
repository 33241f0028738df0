//! `trellis ingress` over TLS and newer protocols, from outside (the underlay): SNI over
//! three certificates, the default certificate, a rotated certificate picked up without a
//! restart, the redirect of plain HTTP to HTTPS, HTTP/2 over TLS, h2c to a backend that
//! asks for it, gRPC trailers end to end, a WebSocket echo that survives 100 route
//! changes, and who may read a TLS Secret.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::ingress::{cert_for, ingress_lab, tls_secret, IngressLab, EDGE};
use common::trellis;
use trellis_lab::{spawn_in_netns, wait_for};

/// curl over HTTPS to `host` (resolved to the edge), trusting only `ca` (`None`: -k).
fn https(
    l: &IngressLab,
    host: &str,
    ca: Option<&std::path::Path>,
    extra: &[&str],
) -> (bool, common::ingress::Answer) {
    let resolve = format!("{host}:443:{EDGE}");
    let url = format!("https://{host}/");
    let ca_s = ca.map(|c| c.display().to_string());
    let mut args = vec![
        "-s",
        "--max-time",
        "5",
        "-D",
        "-",
        "--resolve",
        resolve.as_str(),
    ];
    match &ca_s {
        Some(c) => args.extend(["--cacert", c.as_str()]),
        None => args.push("-k"),
    }
    args.extend_from_slice(extra);
    args.push(&url);
    let u = l.lab.state.underlay.clone();
    let out = l
        .lab
        .exec_any(&u, &[&["curl"][..], &args].concat())
        .unwrap();
    (
        out.status.success(),
        common::ingress::parse(&String::from_utf8_lossy(&out.stdout)),
    )
}

fn ingress_with_tls(hosts: &[(&str, &str)]) -> String {
    let tls: Vec<String> = hosts
        .iter()
        .map(|(h, s)| format!("  - {{hosts: [{h}], secretName: {s}}}"))
        .collect();
    let rules: Vec<String> = hosts
        .iter()
        .map(|(h, _)| format!("  - host: {h}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}]}}"))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: secure, namespace: default}}\nspec:\n  tls:\n{}\n  rules:\n{}\n",
        tls.join("\n"),
        rules.join("\n")
    )
}

#[test]
fn tls_sni_rotation_http2_grpc_websocket() {
    let l = ingress_lab(&[]);
    let dir = l.lab.dir();
    let hosts = ["one.test", "two.test", "three.test"];
    let mut cas = Vec::new();
    for h in hosts {
        let (crt, key) = cert_for(&dir, h, &[h]);
        l.apply(&tls_secret(&h.replace('.', "-"), &crt, &key))
            .unwrap();
        cas.push(dir.join(format!("{h}.crt")));
    }
    l.apply(&ingress_with_tls(&[
        ("one.test", "one-test"),
        ("two.test", "two-test"),
        ("three.test", "three-test"),
    ]))
    .unwrap();

    // SNI: each host is served its own certificate (curl trusts only that one).
    for (h, ca) in hosts.iter().zip(&cas) {
        assert!(
            wait_for(Duration::from_secs(15), || https(&l, h, Some(ca), &[]).0),
            "{h} over TLS"
        );
        let (ok, a) = https(&l, h, Some(ca), &[]);
        assert!(
            ok && a.status == 200 && a.pod().starts_with('a'),
            "{h}: {a:?}"
        );
        assert_eq!(a.json()["headers"]["x-forwarded-proto"], "https");
        // HTTP/2 by ALPN.
        assert_eq!(a.version, "HTTP/2", "{h}");
        // Another host's certificate is not this one.
        let other = &cas[(hosts.iter().position(|x| x == h).unwrap() + 1) % 3];
        assert!(
            !https(&l, h, Some(other), &[]).0,
            "{h} must not verify against another CA"
        );
    }
    // HTTP/1.1 over TLS when the client asks for it.
    let (ok, a) = https(&l, "one.test", Some(&cas[0]), &["--http1.1"]);
    assert!(ok && a.version == "HTTP/1.1", "{a:?}");
    // A name without a certificate gets the default (self-signed) one.
    let u = l.lab.state.underlay.clone();
    let out = l
        .lab
        .exec_any(&u, &["sh", "-c", &format!("openssl s_client -connect {EDGE}:443 -servername nobody.test </dev/null 2>/dev/null | openssl x509 -noout -subject")])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Trellis Ingress Default Certificate"),
        "{out:?}"
    );
    // Plain HTTP to a TLS host is redirected to HTTPS.
    let a = l.get("one.test", "/x?y=1", &[]);
    assert_eq!(
        (a.status, a.header("location")),
        (308, Some("https://one.test/x?y=1"))
    );

    // Rotation: a new certificate for one.test is served without a restart.
    let (crt2, key2) = cert_for(&dir, "one-rotated", &["one.test"]);
    l.apply(&tls_secret("one-test", &crt2, &key2)).unwrap();
    let rotated = dir.join("one-rotated.crt");
    assert!(
        wait_for(Duration::from_secs(15), || https(
            &l,
            "one.test",
            Some(&rotated),
            &[]
        )
        .0),
        "rotated certificate served"
    );
    assert!(
        !https(&l, "one.test", Some(&cas[0]), &[]).0,
        "the old certificate is gone"
    );

    // h2c to a backend whose Service port says appProtocol kubernetes.io/h2c, and
    // HTTP/2 with prior knowledge on the plain listener.
    l.apply("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: grpc, namespace: default}\nspec:\n  hostnames: [grpc.test]\n  rules: [{backendRefs: [{name: c, port: 80}]}]\n")
        .unwrap();
    l.wait_route("grpc.test", "/", "c1");
    let a = l.get("grpc.test", "/", &["--http2-prior-knowledge"]);
    assert_eq!(a.version, "HTTP/2");
    assert_eq!(
        a.json()["proto"],
        "HTTP/2.0",
        "the backend is spoken to in h2c: {a:?}"
    );
    let a = l.get("a-only.test", "/", &[]);
    assert_eq!(a.status, 404);

    // gRPC: a unary call over h2c; the trailers come through.
    let trailers = spawn_in_netns(&u, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(grpc_call()).map_err(std::io::Error::other)
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    assert!(
        trailers.contains("grpc-status: 0") && trailers.contains("x-pod: c1"),
        "{trailers}"
    );

    // A WebSocket stays up across 100 route changes.
    let ws_route = |gen: usize| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: ws, namespace: default}}\nspec:\n  hostnames: [ws.test]\n  rules:\n  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Gen, value: '{gen}'}}]}}}}]\n    backendRefs: [{{name: b, port: 80, weight: {}}}, {{name: a, port: 80, weight: {}}}]\n",
            1 + gen % 2,
            1 + (gen + 1) % 2
        )
    };
    l.apply(&ws_route(0)).unwrap();
    l.wait_route("ws.test", "/", "");
    let (to_ws, ws_rx) = std::sync::mpsc::channel::<Option<usize>>();
    let (ack_tx, from_ws) = std::sync::mpsc::channel::<Result<(), String>>();
    let ws = spawn_in_netns(&u, move || {
        let mut s = TcpStream::connect((EDGE, 80))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b)?;
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.starts_with("HTTP/1.1 101") || !head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
            let _ = ack_tx.send(Err(format!("no upgrade: {head}")));
            return Ok(());
        }
        while let Ok(Some(i)) = ws_rx.recv() {
            let msg = format!("message {i}");
            let r = ws_roundtrip(&mut s, msg.as_bytes()).map_err(|e| e.to_string()).and_then(|got| {
                if got == msg.as_bytes() { Ok(()) } else { Err(format!("echo {:?}", String::from_utf8_lossy(&got))) }
            });
            let _ = ack_tx.send(r);
        }
        Ok(())
    })
    .unwrap();
    for i in 0..100 {
        if i > 0 {
            l.apply(&ws_route(i)).unwrap();
        }
        to_ws.send(Some(i)).unwrap();
        from_ws
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|e| panic!("after {i} route changes: {e}"));
    }
    to_ws.send(None).unwrap();
    ws.join().unwrap().unwrap();
    // New requests see the last version of the route.
    assert!(wait_for(Duration::from_secs(10), || l
        .get("ws.test", "/", &[])
        .json()["headers"]["x-gen"]
        == "99"));

    // Who may read a TLS Secret: admin and ingress tokens; not node or read-only ones.
    let server = l.lab.server_dir();
    let token = |args: &[&str]| {
        let out = std::process::Command::new(trellis())
            .args(["server", "token", "--dir"])
            .arg(&server)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ingress_token =
        std::fs::read_to_string(l.lab.ingress_token(&trellis(), "edge").unwrap()).unwrap();
    let admin = std::fs::read_to_string(server.join("admin.token")).unwrap();
    let ca = server.join("ca.pem").display().to_string();
    let api = |method: &str, tok: &str, path: &str| {
        let out = l
            .lab
            .exec_any(
                &u,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    &ca,
                    "-X",
                    method,
                    "-H",
                    &format!("Authorization: Bearer {tok}"),
                    &format!("https://192.168.77.1:6443{path}"),
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for (who, tok, want) in [
        ("admin", admin.trim().to_string(), "200"),
        ("ingress", ingress_token.trim().to_string(), "200"),
        ("node", token(&["--node", "n1"]), "403"),
        ("read-only", token(&["--read-only"]), "403"),
    ] {
        for path in ["/v1/namespaces/default/secrets/one-test", "/v1/secrets"] {
            assert_eq!(api("GET", &tok, path), want, "{who} GET {path}");
        }
    }
    // The ingress token writes nothing but Ingress status.
    let path = "/v1/namespaces/default/services/a";
    assert_eq!(api("DELETE", ingress_token.trim(), path), "403");
}

/// Send one masked text frame, read one frame back; its payload.
fn ws_roundtrip(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | data.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f)?;
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let mut p = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut p)?;
    Ok(p)
}

/// A unary gRPC-shaped call over h2c to grpc.test; the response trailers as text.
async fn grpc_call() -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    let s = tokio::net::TcpStream::connect((EDGE, 80))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post("http://grpc.test/grpc.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x05hello")))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let mut body = resp.into_body();
    let mut out = String::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| e.to_string())?;
        if let Some(t) = f.trailers_ref() {
            for (k, v) in t {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
        }
    }
    Ok(out)
}
