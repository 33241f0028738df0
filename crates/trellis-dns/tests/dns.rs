//! The cluster DNS server on loopback, with a fake upstream resolver: every record type,
//! negative answers, forwarding (UDP, TCP fallback, failures), TCP clients, record swaps
//! and case-insensitivity.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use trellis_dns::{DnsServer, NamedPort, Proto, Records, ServiceRecord};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---- a fake upstream resolver ----------------------------------------------------------

/// `example.org A 192.0.2.7`; `big.example.org` 120 A records (too many for 1232 bytes:
/// truncated over UDP); `NXDOMAIN` for the rest.
fn upstream_answer(q: &Message) -> Message {
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.clone());
    let Some(query) = q.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    let name = query.name().to_lowercase().to_string();
    match (name.as_str(), query.query_type()) {
        ("example.org.", RecordType::A) => {
            m.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::A(A::new(192, 0, 2, 7)),
            ));
        }
        ("big.example.org.", RecordType::A) => {
            for i in 0..120u8 {
                m.add_answer(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::A(A::new(198, 51, 100, i)),
                ));
            }
        }
        ("example.org.", _) | ("big.example.org.", _) => {}
        _ => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m
}

/// A UDP + TCP resolver on a free loopback port, answering [`upstream_answer`].
async fn fake_upstream() -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let limit = q.edns.as_ref().map_or(512, |e| e.max_payload().max(512));
            let mut a = upstream_answer(&q);
            let mut bytes = a.to_vec().unwrap();
            if bytes.len() > usize::from(limit) {
                a.answers.clear();
                a.metadata.truncation = true;
                bytes = a.to_vec().unwrap();
            }
            let _ = udp.send_to(&bytes, from).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while s.read_exact(&mut len).await.is_ok() {
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Ok(q) = Message::from_vec(&buf) else {
                        return;
                    };
                    let bytes = upstream_answer(&q).to_vec().unwrap();
                    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A loopback address where nothing listens (queries are refused at once).
async fn dead_upstream() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

// ---- a client ---------------------------------------------------------------------------

fn request(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    m
}

fn check_response(q: &Message, r: &Message) {
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert_eq!(r.queries, q.queries, "the question is echoed as asked");
}

async fn query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let q = request(name, qtype);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    sock.send(&q.to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = timeout(CLIENT_TIMEOUT, sock.recv(&mut buf))
        .await
        .expect("no UDP answer in time")
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    check_response(&q, &r);
    r
}

async fn query_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let q = request(name, qtype);
    let bytes = q.to_vec().unwrap();
    let exchange = async {
        let mut s = TcpStream::connect(server).await.unwrap();
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        s.write_all(&out).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    };
    let r = timeout(CLIENT_TIMEOUT, exchange)
        .await
        .expect("no TCP answer in time");
    check_response(&q, &r);
    r
}

fn a_set(records: &[Record]) -> BTreeSet<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// (port, target) of the SRV records.
fn srv_set(m: &Message) -> BTreeSet<(u16, String)> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.port, s.target.to_string()),
            other => panic!("not an SRV record: {other:?}"),
        })
        .collect()
}

fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name.to_string() == "cluster.local.")
}

// ---- fixtures ---------------------------------------------------------------------------

fn port(name: &str, port: u16, protocol: Proto) -> NamedPort {
    NamedPort {
        name: name.into(),
        port,
        protocol,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn records() -> Records {
    let mut r = Records::new("cluster.local");
    r.add_service(
        "default",
        "web",
        ServiceRecord::ClusterIp {
            ip: ip("10.96.0.10"),
            ports: vec![port("http", 80, Proto::Tcp), port("dns", 53, Proto::Udp)],
        },
    );
    r.add_service(
        "db",
        "pg",
        ServiceRecord::Headless {
            endpoints: vec![ip("10.244.1.5"), ip("10.244.2.7")],
            ports: vec![port("postgres", 5432, Proto::Tcp)],
        },
    );
    r.add_service(
        "default",
        "ext",
        ServiceRecord::ExternalName("example.org".into()),
    );
    r.add_service(
        "default",
        "alias",
        ServiceRecord::ExternalName("web.default.svc.cluster.local.".into()),
    );
    r
}

async fn server_with(upstreams: Vec<SocketAddr>) -> DnsServer {
    let s = DnsServer::start("127.0.0.1:0".parse().unwrap(), "cluster.local", upstreams)
        .await
        .unwrap();
    s.set_records(records());
    s
}

async fn server() -> DnsServer {
    server_with(vec![fake_upstream().await]).await
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_ip_a_record() {
    let s = server().await;
    let r = query(
        s.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, trellis_dns::TTL);
    assert_eq!(
        r.answers[0].name.to_string(),
        "web.default.svc.cluster.local."
    );
}

#[tokio::test]
async fn headless_a_records_are_the_endpoints() {
    let s = server().await;
    let r = query(s.local_addr(), "pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        a_set(&r.answers),
        [ip("10.244.1.5"), ip("10.244.2.7")].into()
    );
    assert_eq!(r.answers.len(), 2);
    // The per-endpoint host names.
    let r = query(
        s.local_addr(),
        "10-244-2-7.pg.db.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.244.2.7")].into());
    // An address that is not an endpoint has no host name.
    let r = query(
        s.local_addr(),
        "10-244-9-9.pg.db.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn external_name_is_a_cname_followed_upstream() {
    let s = server().await;
    let r = query(
        s.local_addr(),
        "ext.default.svc.cluster.local.",
        RecordType::CNAME,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    match &r.answers[0].data {
        RData::CNAME(c) => assert_eq!(c.0.to_string(), "example.org."),
        other => panic!("{other:?}"),
    }
    // An A query gets the CNAME and the target's address from the upstream.
    let r = query(
        s.local_addr(),
        "ext.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a_set(&r.answers), [ip("192.0.2.7")].into());
    // A CNAME to a name in the domain is followed inside.
    let r = query(
        s.local_addr(),
        "alias.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());
    assert_eq!(
        r.answers[1].name.to_string(),
        "web.default.svc.cluster.local."
    );
}

#[tokio::test]
async fn srv_records_for_named_ports() {
    let s = server().await;
    let r = query(
        s.local_addr(),
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        srv_set(&r),
        [(80, "web.default.svc.cluster.local.".to_string())].into()
    );
    assert_eq!(a_set(&r.additionals), [ip("10.96.0.10")].into());

    let r = query(
        s.local_addr(),
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_set(&r),
        [(53, "web.default.svc.cluster.local.".to_string())].into()
    );
    // The port is TCP only: no UDP name.
    let r = query(
        s.local_addr(),
        "_http._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    // Headless: one per endpoint, the targets' addresses in the additional section.
    let r = query(
        s.local_addr(),
        "_postgres._tcp.pg.db.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_set(&r),
        [
            (5432, "10-244-1-5.pg.db.svc.cluster.local.".to_string()),
            (5432, "10-244-2-7.pg.db.svc.cluster.local.".to_string()),
        ]
        .into()
    );
    assert_eq!(
        a_set(&r.additionals),
        [ip("10.244.1.5"), ip("10.244.2.7")].into()
    );
}

#[tokio::test]
async fn pod_names() {
    let s = server().await;
    for ns in ["default", "any-namespace"] {
        let r = query(
            s.local_addr(),
            &format!("10-244-3-17.{ns}.pod.cluster.local."),
            RecordType::A,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_set(&r.answers), [ip("10.244.3.17")].into());
    }
    let r = query(
        s.local_addr(),
        "10-244-3.default.pod.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_missing_types_nodata() {
    let s = server().await;
    for name in [
        "nope.default.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "example.org.default.svc.cluster.local.",
        "nope.cluster.local.",
    ] {
        for (r, via) in [
            (query(s.local_addr(), name, RecordType::A).await, "udp"),
            (query_tcp(s.local_addr(), name, RecordType::A).await, "tcp"),
        ] {
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} {via}"
            );
            assert!(r.metadata.authoritative, "{name}");
            assert!(r.answers.is_empty(), "{name}");
            assert!(has_soa(&r), "{name}: {:?}", r.authorities);
        }
    }
    // Existing names without a record of the type: NODATA, with the SOA.
    for (name, qtype) in [
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::TXT),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
        ("10-1-2-3.default.pod.cluster.local.", RecordType::AAAA),
    ] {
        let r = query(s.local_addr(), name, qtype).await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(r.answers.is_empty(), "{name} {qtype}");
        assert!(has_soa(&r), "{name} {qtype}");
    }
    let r = query(s.local_addr(), "cluster.local.", RecordType::SOA).await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let s = server().await;
    let r = query(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.metadata.authoritative);
    assert!(r.metadata.recursion_available);
    assert_eq!(a_set(&r.answers), [ip("192.0.2.7")].into());
    // The upstream's NXDOMAIN goes back as it is.
    let r = query(s.local_addr(), "nope.example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Over TCP too.
    let r = query_tcp(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(a_set(&r.answers), [ip("192.0.2.7")].into());
}

#[tokio::test]
async fn truncated_upstream_answers_are_fetched_over_tcp() {
    let s = server().await;
    // The upstream truncates 120 A records over UDP: the server asks again over TCP and
    // a TCP client gets them all.
    let r = query_tcp(s.local_addr(), "big.example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 120);
    assert!(!r.metadata.truncation);
    // A UDP client with a 4096-byte buffer gets them all as well (~2 KB).
    let r = query(s.local_addr(), "big.example.org.", RecordType::A).await;
    assert_eq!(r.answers.len(), 120);
}

#[tokio::test]
async fn servfail_when_the_upstream_is_down() {
    // Refused at once.
    let s = server_with(vec![dead_upstream().await]).await;
    let r = query(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    // Cluster names do not need the upstream.
    let r = query(
        s.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());
    // An ExternalName whose target cannot be followed still gets its CNAME.
    let r = query(
        s.local_addr(),
        "ext.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);

    // Silent: SERVFAIL after the bounded timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server_with(vec![silent.local_addr().unwrap()]).await;
    let t = Instant::now();
    let r = query(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "{took:?}"
    );

    // No upstream at all.
    let s = server_with(vec![]).await;
    let r = query(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);

    // A dead first upstream is skipped for the next one.
    let s = server_with(vec![dead_upstream().await, fake_upstream().await]).await;
    let r = query(s.local_addr(), "example.org.", RecordType::A).await;
    assert_eq!(a_set(&r.answers), [ip("192.0.2.7")].into());
}

#[tokio::test]
async fn tcp_queries() {
    let s = server().await;
    let r = query_tcp(
        s.local_addr(),
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());
    let r = query_tcp(
        s.local_addr(),
        "_postgres._tcp.pg.db.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv_set(&r).len(), 2);
}

#[tokio::test]
async fn set_records_takes_effect() {
    let s = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        "cluster.local",
        vec![fake_upstream().await],
    )
    .await
    .unwrap();
    let name = "web.default.svc.cluster.local.";
    // Nothing before the first set.
    let r = query(s.local_addr(), name, RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    s.set_records(records());
    let r = query(s.local_addr(), name, RecordType::A).await;
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());

    // A new set replaces the old one whole.
    let mut next = Records::new("cluster.local");
    next.add_service(
        "default",
        "api",
        ServiceRecord::ClusterIp {
            ip: ip("10.96.0.20"),
            ports: vec![],
        },
    );
    // Adding a service again replaces it.
    next.add_service(
        "default",
        "api",
        ServiceRecord::ClusterIp {
            ip: ip("10.96.0.21"),
            ports: vec![],
        },
    );
    s.set_records(next);
    let r = query(s.local_addr(), name, RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = query(
        s.local_addr(),
        "api.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.96.0.21")].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_are_atomic() {
    // Two sets whose headless service has disjoint endpoints: every answer is all of
    // one set, never a mix, while the sets swap under the queries.
    let set = |base: u8| {
        let mut r = Records::new("cluster.local");
        r.add_service(
            "default",
            "hl",
            ServiceRecord::Headless {
                endpoints: (1..=20).map(|i| Ipv4Addr::new(10, 244, base, i)).collect(),
                ports: vec![],
            },
        );
        r
    };
    let s = std::sync::Arc::new(
        DnsServer::start("127.0.0.1:0".parse().unwrap(), "cluster.local", vec![])
            .await
            .unwrap(),
    );
    s.set_records(set(1));
    let a: BTreeSet<Ipv4Addr> = (1..=20).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
    let b: BTreeSet<Ipv4Addr> = (1..=20).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let mut swaps = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                s.set_records(set(if swaps.is_multiple_of(2) { 2 } else { 1 }));
                swaps += 1;
                tokio::task::yield_now().await;
            }
            swaps
        })
    };
    let (mut from_a, mut from_b) = (0, 0);
    for _ in 0..300 {
        let r = query(
            s.local_addr(),
            "hl.default.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        let got = a_set(&r.answers);
        assert_eq!(r.answers.len(), 20);
        match () {
            _ if got == a => from_a += 1,
            _ if got == b => from_b += 1,
            _ => panic!("a mix: {got:?}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert!(swaps > 10, "{swaps} swaps");
    assert!(
        from_a > 0 && from_b > 0,
        "{from_a} / {from_b}: the swaps were not seen"
    );
}

#[tokio::test]
async fn names_are_case_insensitive() {
    let s = server().await;
    let asked = "WEB.Default.SVC.Cluster.LOCAL.";
    let r = query(s.local_addr(), asked, RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_set(&r.answers), [ip("10.96.0.10")].into());
    // The answer is spelled as asked.
    assert_eq!(r.answers[0].name.to_string(), asked);
    let r = query(
        s.local_addr(),
        "_HTTP._Tcp.Web.Default.Svc.Cluster.Local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv_set(&r).len(), 1);
    let r = query(
        s.local_addr(),
        "10-1-2-3.X.POD.cluster.LOCAL.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.1.2.3")].into());
    let r = query(s.local_addr(), "EXAMPLE.org.", RecordType::A).await;
    assert_eq!(a_set(&r.answers), [ip("192.0.2.7")].into());
    // Service names given in upper case are stored in lower case.
    let mut rec = Records::new("Cluster.Local");
    rec.add_service(
        "Default",
        "Upper",
        ServiceRecord::ClusterIp {
            ip: ip("10.96.0.30"),
            ports: vec![],
        },
    );
    s.set_records(rec);
    let r = query(
        s.local_addr(),
        "upper.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_set(&r.answers), [ip("10.96.0.30")].into());
}

#[tokio::test]
async fn udp_answers_respect_the_client_buffer() {
    // A client without EDNS gets at most 512 bytes: the answer is truncated (TC) and it
    // can retry over TCP.
    let s = server().await;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii("big.example.org.").unwrap(),
        RecordType::A,
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(s.local_addr()).await.unwrap();
    sock.send(&q.to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = timeout(CLIENT_TIMEOUT, sock.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n <= 512, "{n} bytes");
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert!(r.metadata.truncation);
}

#[tokio::test]
async fn shutdown_frees_the_address_and_a_taken_address_is_an_error() {
    let s = server().await;
    let addr = s.local_addr();
    match DnsServer::start(addr, "cluster.local", vec![]).await {
        Err(trellis_dns::DnsError::Bind { proto, .. }) => assert_eq!(proto, "udp"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        DnsServer::start("127.0.0.1:0".parse().unwrap(), "", vec![]).await,
        Err(trellis_dns::DnsError::InvalidName { .. })
    ));
    s.shutdown().await;
    let again = DnsServer::start(addr, "cluster.local", vec![])
        .await
        .unwrap();
    assert_eq!(again.local_addr(), addr);
    let r = query_tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

/// Schema 1.1.0: `PTR` for a cluster IP (to the service) and for each headless endpoint
/// (to its host name); reverse names of other addresses go upstream; the schema version
/// as `TXT dns-version.<domain>`.
#[tokio::test]
async fn reverse_records_and_the_schema_version() {
    let s = server().await;
    let ptr = |m: &Message| -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_string()),
                _ => None,
            })
            .collect()
    };
    let r = query(s.local_addr(), "10.0.96.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(ptr(&r), ["web.default.svc.cluster.local."]);
    assert_eq!(r.answers[0].ttl, trellis_dns::TTL);
    let r = query(s.local_addr(), "7.2.244.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr(&r), ["10-244-2-7.pg.db.svc.cluster.local."]);
    // Another type at a known reverse name: NODATA.
    let r = query(s.local_addr(), "10.0.96.10.in-addr.arpa.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // An address no service has: not ours (the fake upstream says NXDOMAIN).
    let r = query(s.local_addr(), "9.9.96.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(!r.metadata.authoritative);
    // The schema version.
    let r = query(
        s.local_addr(),
        "dns-version.cluster.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let txt: Vec<String> = r
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(txt, ["1.1.0"]);
}
