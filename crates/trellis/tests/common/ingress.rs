//! Ingress labs: a 2-node cluster, `trellis lab echo` pods behind Services `a`, `b`, `c`
//! (`c` speaks h2c), `trellis ingress` on the edge node n1 (192.168.77.11:80/443), and
//! curl in the underlay as the outside client.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::cluster::cluster_lab;
use super::{plugin, require, trellis};
use trellis_lab::ingress::LabIngress;
use trellis_lab::{wait_for, Lab};

/// The edge node's address, where the ingress listens.
pub const EDGE: &str = "192.168.77.11";

/// A lab with its ingress.
pub struct IngressLab {
    /// The lab.
    pub lab: Lab,
    /// The ingress on n1.
    pub ingress: LabIngress,
    /// Pod name → address.
    pub pods: BTreeMap<String, Ipv4Addr>,
}

/// Add pod `name` with label `app=APP` on node `n`, serving `trellis lab echo`.
pub fn echo_pod(lab: &mut Lab, n: usize, name: &str, app: &str) -> Ipv4Addr {
    let pod = lab.add_pod(n, name).unwrap();
    let ip = lab
        .cni_add_pod_to(&plugin(), &pod.netns, &format!("LABELS=app={app}"), None)
        .expect("ADD");
    lab.start_echo(&trellis(), &pod.netns, name).unwrap();
    ip
}

/// The Services: `a`, `b` (port 80 named `http` → 8080) and `c` (h2c).
pub const SERVICES: &str = "
apiVersion: trellis/v1
kind: Service
metadata: {name: a, namespace: default}
spec:
  selector: {app: a}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: trellis/v1
kind: Service
metadata: {name: b, namespace: default}
spec:
  selector: {app: b}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: trellis/v1
kind: Service
metadata: {name: c, namespace: default}
spec:
  selector: {app: c}
  ports: [{name: h2c, port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}]
";

/// Build the lab: pods a1, b1 on n1; a2, b2, c1 on n2; the Services; the ingress with
/// `extra` arguments.
pub fn ingress_lab(extra: &[&str]) -> IngressLab {
    require(&["curl", "openssl"]);
    let mut lab = cluster_lab(2, 0, "vxlan", 0);
    let mut pods = BTreeMap::new();
    for (n, name, app) in [
        (0, "a1", "a"),
        (0, "b1", "b"),
        (1, "a2", "a"),
        (1, "b2", "b"),
        (1, "c1", "c"),
    ] {
        pods.insert(name.to_string(), echo_pod(&mut lab, n, name, app));
    }
    lab.apply(&trellis(), SERVICES).unwrap();
    let n1 = lab.state.nodes[0].netns.clone();
    let ingress = lab
        .start_ingress(
            &trellis(),
            &n1,
            "edge",
            format!("{EDGE}:80").parse().unwrap(),
            Some(format!("{EDGE}:443").parse().unwrap()),
            extra,
        )
        .unwrap();
    IngressLab { lab, ingress, pods }
}

/// One answer seen by curl.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP version of the last answer (`HTTP/1.1`, `HTTP/2`).
    pub version: String,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// Response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Answer {
    /// The echo's JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The pod that answered (`-` when none did).
    pub fn pod(&self) -> String {
        self.json()["pod"].as_str().unwrap_or("-").to_string()
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl IngressLab {
    /// curl from the underlay with `args` (the URL among them).
    pub fn curl(&self, args: &[&str]) -> Answer {
        let mut argv = vec!["curl", "-s", "--max-time", "5", "-D", "-"];
        argv.extend_from_slice(args);
        let u = self.lab.state.underlay.clone();
        let out = self.lab.exec_any(&u, &argv).unwrap();
        parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `GET http://EDGE{path}` with `Host: host`, plus `args`.
    pub fn get(&self, host: &str, path: &str, args: &[&str]) -> Answer {
        let url = format!("http://{EDGE}{path}");
        let h = format!("Host: {host}");
        let mut a = vec!["-H", h.as_str()];
        a.extend_from_slice(args);
        a.push(&url);
        self.curl(&a)
    }

    /// Apply a manifest as admin.
    pub fn apply(&self, manifest: &str) -> Result<String, String> {
        self.lab
            .apply(&trellis(), manifest)
            .map_err(|e| e.to_string())
    }

    /// Wait until `GET host path` lands on a pod of `want` (`404`/`503` for those statuses).
    pub fn wait_route(&self, host: &str, path: &str, want: &str) {
        let mut last = None;
        let ok = wait_for(Duration::from_secs(15), || {
            let a = self.get(host, path, &[]);
            let got = if a.status == 200 {
                a.pod()
            } else {
                a.status.to_string()
            };
            let hit = got.starts_with(want);
            last = Some(a);
            hit
        });
        assert!(ok, "{host}{path}: wanted {want}, last answer {last:?}");
    }
}

/// Split curl's `-D -` output: header blocks (several with 1xx/redirects), then body.
pub fn parse(out: &str) -> Answer {
    let mut rest = out;
    let mut status = 0;
    let mut version = String::new();
    let mut headers = Vec::new();
    while rest.starts_with("HTTP/") {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default();
        version = first
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        status = Some(first)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        rest = body;
    }
    Answer {
        version,
        status,
        headers,
        body: rest.to_string(),
    }
}

/// A self-signed certificate and key (PEM) for `hosts`, made with openssl.
pub fn cert_for(dir: &std::path::Path, name: &str, hosts: &[&str]) -> (String, String) {
    let (crt, key) = trellis_lab::ingress::self_signed_cert(dir, name, hosts).unwrap();
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

/// A `kubernetes.io/tls` Secret manifest (apiVersion v1, as kubectl writes it).
pub fn tls_secret(name: &str, crt: &str, key: &str) -> String {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b(crt),
        b(key)
    )
}
