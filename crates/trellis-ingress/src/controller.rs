//! The ingress's one controller: informers on Ingresses, HTTPRoutes, Services, Endpoints
//! and Secrets → [`table::build`] → swap the proxy's table and the SNI certificates.
//! Changes that arrive while a table builds are folded into the next build. It also
//! writes the addresses it serves on into the status of the Ingresses it serves.

use std::sync::Arc;
use std::time::Duration;

use trellis_api::objects::{
    AnyObject, Endpoint, HttpRoute, Ingress, IngressLoadBalancerIngress, Kind, Secret, Service,
};
use trellis_client::informer::Informer;
use trellis_client::{list_path, object_path, Client};

use crate::proxy::Proxy;
use crate::table::{self, Inputs};
use crate::tls::SniResolver;

/// What the controller needs besides the client.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The ingress class served.
    pub class: String,
    /// The default per-client rate limit.
    pub default_rate_limit: Option<u32>,
    /// Addresses written into the status of served Ingresses (none: status untouched).
    pub publish: Vec<String>,
}

/// The informers.
#[derive(Debug, Clone)]
struct Informers {
    ingresses: Informer,
    routes: Informer,
    services: Informer,
    endpoints: Informer,
    secrets: Informer,
}

impl Informers {
    fn all(&self) -> [&Informer; 5] {
        [
            &self.ingresses,
            &self.routes,
            &self.services,
            &self.endpoints,
            &self.secrets,
        ]
    }
}

fn typed<'a, T>(v: &'a [Arc<AnyObject>], f: impl Fn(&'a AnyObject) -> Option<&'a T>) -> Vec<&'a T> {
    v.iter().filter_map(|o| f(o)).collect()
}

/// Run the controller forever: keep `proxy`'s table and `certs` in step with the API.
/// `built` sees a new value after every table swap.
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    proxy: Arc<Proxy>,
    certs: Arc<SniResolver>,
    built: tokio::sync::watch::Sender<u64>,
) {
    let inf = Informers {
        ingresses: Informer::start(client.clone(), list_path(Kind::Ingress, None)),
        routes: Informer::start(client.clone(), list_path(Kind::HttpRoute, None)),
        services: Informer::start(client.clone(), list_path(Kind::Service, None)),
        endpoints: Informer::start(client.clone(), list_path(Kind::Endpoint, None)),
        secrets: Informer::start(client.clone(), list_path(Kind::Secret, None)),
    };
    let mut subs: Vec<_> = inf.all().iter().map(|i| i.subscribe()).collect();
    let (status_tx, status_rx) = tokio::sync::watch::channel(());
    if !cfg.publish.is_empty() {
        tokio::spawn(status_loop(
            client,
            cfg.clone(),
            inf.ingresses.clone(),
            status_rx,
        ));
    }
    let mut generation = 0u64;
    let mut last_warnings: Vec<String> = Vec::new();
    let mut last_log = std::time::Instant::now() - Duration::from_secs(10);
    loop {
        // Every informer must have listed once before the first table goes in: a table
        // without the Services would answer 503 to everything.
        let snaps: Option<Vec<Vec<Arc<AnyObject>>>> =
            inf.all().iter().map(|i| i.snapshot()).collect();
        if let Some(s) = snaps {
            let started = std::time::Instant::now();
            // The build runs off the control thread, so the informers keep reading
            // their watches meanwhile (what arrives goes into the next build).
            let (class, rate, health) = (
                cfg.class.clone(),
                cfg.default_rate_limit,
                proxy.health.clone(),
            );
            let Ok(t) =
                tokio::task::spawn_blocking(move || build_from(&s, &class, rate, &health)).await
            else {
                tracing::error!("the routing table build panicked; keeping the current table");
                continue;
            };
            if t.warnings != last_warnings {
                for w in &t.warnings {
                    tracing::warn!("{w}");
                }
                last_warnings = t.warnings.clone();
            }
            let mut c = t.certs.clone();
            if c.default.is_none() {
                c.default = certs.current().default.clone();
            }
            certs.set(c);
            generation += 1;
            if last_log.elapsed() >= Duration::from_secs(1) {
                last_log = std::time::Instant::now();
                tracing::info!(
                    generation,
                    routes = t.route_count,
                    build_ms = started.elapsed().as_secs_f64() * 1e3,
                    "routing table swapped"
                );
            }
            proxy.set_table(t);
            built.send_replace(generation);
            status_tx.send_replace(());
        }
        // Wait for any change.
        let changed = subs.iter_mut().map(|s| Box::pin(s.changed()));
        let (res, _, _) = futures::future::select_all(changed).await;
        if res.is_err() {
            return;
        }
        for s in &mut subs {
            s.borrow_and_update();
        }
    }
}

/// The table from the informers' snapshots (in [`Informers::all`] order).
fn build_from(
    s: &[Vec<Arc<AnyObject>>],
    class: &str,
    rate: Option<u32>,
    health: &crate::health::Health,
) -> table::Table {
    let ingresses: Vec<&Ingress> = typed(&s[0], |o| match o {
        AnyObject::Ingress(i) => Some(i),
        _ => None,
    });
    let routes: Vec<&HttpRoute> = typed(&s[1], |o| match o {
        AnyObject::HttpRoute(r) => Some(r),
        _ => None,
    });
    let services: Vec<&Service> = typed(&s[2], |o| match o {
        AnyObject::Service(x) => Some(x),
        _ => None,
    });
    let endpoints: Vec<&Endpoint> = typed(&s[3], |o| match o {
        AnyObject::Endpoint(x) => Some(x),
        _ => None,
    });
    let secrets: Vec<&Secret> = typed(&s[4], |o| match o {
        AnyObject::Secret(x) => Some(x),
        _ => None,
    });
    table::build(
        Inputs {
            ingresses: &ingresses,
            routes: &routes,
            services: &services,
            endpoints: &endpoints,
            secrets: &secrets,
            class,
            default_rate_limit: rate,
        },
        health,
    )
}

/// Keep our addresses in the status of every Ingress we serve.
async fn status_loop(
    client: Client,
    cfg: ControllerConfig,
    ingresses: Informer,
    mut changed: tokio::sync::watch::Receiver<()>,
) {
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        let Some(all) = ingresses.snapshot() else {
            continue;
        };
        for o in all {
            let AnyObject::Ingress(i) = &*o else { continue };
            if i.spec
                .ingress_class_name
                .as_deref()
                .is_some_and(|c| c != cfg.class)
            {
                continue;
            }
            let have = &i.status.load_balancer.ingress;
            let missing: Vec<&String> = cfg
                .publish
                .iter()
                .filter(|a| {
                    !have
                        .iter()
                        .any(|h| h.ip.as_ref() == Some(a) || h.hostname.as_ref() == Some(a))
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut new = i.clone();
            for a in missing {
                let entry = if a.parse::<std::net::IpAddr>().is_ok() {
                    IngressLoadBalancerIngress {
                        ip: Some(a.clone()),
                        hostname: None,
                    }
                } else {
                    IngressLoadBalancerIngress {
                        ip: None,
                        hostname: Some(a.clone()),
                    }
                };
                new.status.load_balancer.ingress.push(entry);
            }
            new.status.load_balancer.ingress.sort();
            let path = object_path(Kind::Ingress, i.namespace(), i.name());
            if let Err(e) = client
                .put(&path, &serde_json::to_value(&new).expect("serializes"))
                .await
            {
                // A conflict means it changed: the next round sees the new one.
                tracing::debug!(ingress = %path, "status: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                changed.mark_changed();
            }
        }
    }
}
