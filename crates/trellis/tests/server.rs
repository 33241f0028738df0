//! The `trellis server` process: `kill -9` while clients write, restart on the same
//! embedded store file, and every write that was acknowledged is there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_client::{Client, Config};

/// A server process, killed by PID on drop.
struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_server(dir: &Path, port: u16) -> ServerProc {
    ServerProc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["server", "run", "--dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("TRELLIS_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn trellis server"),
    )
}

async fn wait_up(c: &Client) {
    let t = Instant::now();
    while c.get("/v1/pods").await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["server", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = Config {
        server: format!("https://127.0.0.1:{port}"),
        ca: Some(dir.path().join("ca.pem")),
        token: Some(std::fs::read_to_string(dir.path().join("admin.token")).unwrap()),
        token_file: None,
    };
    let mut server = run_server(dir.path(), port);
    let c = Client::new(&cfg).unwrap();
    wait_up(&c).await;
    // 8 writers create pods until the server dies under them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let c = Client::new(&cfg).unwrap();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("w{w}-{i}");
                    let pod = json!({"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": name}});
                    match c.post("/v1/namespaces/default/pods", &pod).await {
                        Ok(_) => acked.lock().unwrap().push(name),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: kill(2) of the child we spawned.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGKILL) };
    let _ = server.0.wait();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} writes before the kill",
        acked.len()
    );
    let _server = run_server(dir.path(), port);
    wait_up(&c).await;
    let list = c.get("/v1/namespaces/default/pods").await.unwrap();
    let stored: std::collections::HashSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !stored.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    // At most one write per writer was applied without its answer arriving.
    assert!(stored.len() <= acked.len() + 8);
}
