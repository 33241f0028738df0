//! Parsing tests: JSON and YAML, paths in errors, dispatch on kind, defaults, round trips.

use super::*;

#[track_caller]
fn json_err(json: &str) -> ValidationError {
    parse_json(json.as_bytes()).expect_err("should not parse")
}

#[track_caller]
fn assert_err(e: &ValidationError, field: &str, fragment: &str) {
    assert_eq!(e.field, field, "{e}");
    assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
}

const NETWORK: &str = r#"{"apiVersion": "trellis/v1", "kind": "Network",
  "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}}"#;

#[test]
fn network_defaults() {
    let AnyObject::Network(n) = parse_json(NETWORK.as_bytes()).unwrap() else {
        panic!("not a network")
    };
    assert_eq!(n.spec.cidr.to_string(), "10.244.0.0/16");
    assert_eq!(n.spec.node_subnet_prefix, 24);
    assert_eq!(n.spec.backend, Backend::Vxlan);
    assert!(n.spec.masquerade);
    assert_eq!(n.spec.vni, None);
    assert_eq!(n.spec.mtu, None);
    assert!(n.spec.reserved.is_empty());
    assert_eq!(n.status, NetworkStatus::default());
    n.validate().unwrap();
}

#[test]
fn kind_facts() {
    let o = parse_json(NETWORK.as_bytes()).unwrap();
    assert_eq!(o.kind(), Kind::Network);
    assert_eq!(o.kind().plural(), "networks");
    assert!(!o.kind().namespaced());
    assert_eq!(o.name(), "pods");
    assert_eq!(o.namespace(), None);
    let plurals: Vec<_> = Kind::ALL.iter().map(|k| k.plural()).collect();
    assert_eq!(
        plurals,
        [
            "networks",
            "nodes",
            "pods",
            "endpoints",
            "services",
            "loadbalancerpools",
            "namespaces",
            "networkpolicies",
            "clusternetworkpolicies",
            "tenants",
            "tenantpeerings",
            "bgpconfigurations",
            "bgppeers",
            "bgpfilters",
            "secrets",
            "ingresses",
            "httproutes"
        ]
    );
    for k in Kind::ALL {
        assert_eq!(Kind::from_plural(k.plural()), Some(k));
        assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        assert_eq!(k.to_string(), k.as_str());
    }
    assert_eq!(Kind::from_plural("network"), None);
    let namespaced: Vec<_> = Kind::ALL.into_iter().filter(|k| k.namespaced()).collect();
    assert_eq!(
        namespaced,
        [
            Kind::Pod,
            Kind::Endpoint,
            Kind::Service,
            Kind::NetworkPolicy,
            Kind::Secret,
            Kind::Ingress,
            Kind::HttpRoute
        ]
    );
}

#[test]
fn unknown_field_names_its_path() {
    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"},
            "spec": {"cidrr": "10.244.0.0/16"}}"#,
    );
    assert_err(
        &e,
        "spec.cidrr",
        "unknown field `cidrr`, expected one of `cidr`",
    );
    assert!(
        e.to_string().starts_with("spec.cidrr: unknown field"),
        "{e}"
    );

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "p", "uid": "x"}}"#,
    );
    assert_err(&e, "metadata.uid", "unknown field `uid`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "p"}, "extra": 1}"#,
    );
    assert_err(&e, "extra", "unknown field `extra`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}"#,
    );
    assert_err(&e, "spec.x", "unknown field `x`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}, {"port": 81, "nodeport": 30001}]}}"#,
    );
    assert_err(
        &e,
        "spec.ports[1].nodeport",
        "unknown field `nodeport`, expected one of",
    );
}

#[test]
fn bad_types_name_their_path() {
    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.244.0.0/16", "nodeSubnetPrefix": "24"}}"#,
    );
    assert_err(
        &e,
        "spec.nodeSubnetPrefix",
        "invalid type: string \"24\", expected u8",
    );

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.244.0.0"}}"#,
    );
    assert_eq!(e.field, "spec.cidr", "{e}");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.244.0.0/16", "backend": "geneve"}}"#,
    );
    assert_err(
        &e,
        "spec.backend",
        "unknown variant `geneve`, expected one of `vxlan`, `host-gw`",
    );

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}, {"port": 70000}]}}"#,
    );
    assert_err(
        &e,
        "spec.ports[1].port",
        "invalid value: integer `70000`, expected u16",
    );

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"type": "Nodeport", "ports": [{"port": 80}]}}"#,
    );
    assert_err(&e, "spec.type", "unknown variant `Nodeport`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"version": 1.5}}}"#,
    );
    assert_err(
        &e,
        "metadata.labels.version",
        "invalid type: floating point `1.5`",
    );

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"}}"#,
    );
    assert_err(&e, "", "missing field `spec`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "n"}, "spec": {}}"#,
    );
    assert_err(&e, "spec", "missing field `cidr`");

    let e = json_err(
        r#"{"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": "n"},
            "spec": {"address": "192.168.50.300"}}"#,
    );
    assert_err(&e, "spec.address", "invalid IPv4 address syntax");
}

#[test]
fn kind_and_api_version() {
    let e = json_err(r#"{"apiVersion": "trellis/v1", "kind": "Foo", "metadata": {"name": "x"}}"#);
    assert_err(&e, "kind", "unknown kind \"Foo\"");
    assert_eq!(
        e.to_string(),
        r#"kind: unknown kind "Foo", expected one of Network, Node, Pod, Endpoint, Service, LoadBalancerPool, Namespace, NetworkPolicy, ClusterNetworkPolicy, Tenant, TenantPeering, BGPConfiguration, BGPPeer, BGPFilter, Secret, Ingress, HTTPRoute"#
    );
    // kind is checked first, so a wrong apiVersion with an unknown kind reports the kind.
    let e = json_err(r#"{"apiVersion": "v1", "kind": "Deployment"}"#);
    assert_eq!(e.field, "kind");

    let e = json_err(r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}"#);
    assert_eq!(
        e.to_string(),
        r#"apiVersion: must be "trellis/v1" for Service, got "v1""#
    );
    // Kubernetes manifests of the kinds Trellis mirrors are accepted as they are.
    parse_json(br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}"#).unwrap();
    parse_json(br#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}"#).unwrap();
    let e = json_err(r#"{"apiVersion": "v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}}"#);
    assert_err(&e, "apiVersion", "networking.k8s.io/v1");
    let e = json_err(r#"{"kind": "Pod", "metadata": {"name": "x"}}"#);
    assert_eq!(e.to_string(), "apiVersion: is required");
    let e = json_err(r#"{"apiVersion": "trellis/v1", "metadata": {"name": "x"}}"#);
    assert_eq!(e.to_string(), "kind: is required");
    let e = json_err(r#"{"apiVersion": "trellis/v1", "kind": 3}"#);
    assert_eq!(e.to_string(), "kind: must be a string, got a number");
    let e = json_err(r#"[1, 2]"#);
    assert_eq!(e.to_string(), "a manifest must be an object, got a list");
    let e = json_err(r#"{"apiVersion": "#);
    assert_err(&e, "", "invalid JSON: EOF while parsing");

    // Typed deserialization checks kind and apiVersion too (after the fields parse).
    let pod = r#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "p"}}"#;
    let e = serde_json::from_str::<Network>(pod).unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"kind: must be "Network", got "Pod""#),
        "{e}"
    );
    let e = serde_json::from_str::<Pod>(r#"{"apiVersion": "x", "kind": "Pod"}"#).unwrap_err();
    assert!(e.to_string().contains("apiVersion: must be"), "{e}");
    let n: Network = serde_json::from_str(NETWORK).unwrap();
    assert_eq!(n.name(), "pods");
}

#[test]
fn pod_spec_may_be_absent() {
    let o = parse_json(br#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}}}"#)
        .unwrap();
    let AnyObject::Pod(p) = &o else { panic!() };
    assert_eq!(p.spec, PodSpec::default());
    assert_eq!(p.metadata.labels["app"], "web");
    assert_eq!(
        o.namespace(),
        None,
        "parsing does not default the namespace"
    );
    let e = o.validate().unwrap_err();
    assert_eq!(e.field, "metadata.namespace");
    let mut o = o;
    o.default_namespace(DEFAULT_NAMESPACE);
    assert_eq!(o.namespace(), Some("default"));
    o.validate().unwrap();
    // Cluster-scoped kinds are not given a namespace.
    let mut n = parse_json(NETWORK.as_bytes()).unwrap();
    n.default_namespace(DEFAULT_NAMESPACE);
    assert_eq!(n.namespace(), None);
    // null spec and status count as absent.
    parse_json(br#"{"apiVersion": "trellis/v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": null, "status": null}"#)
        .unwrap();
}

#[test]
fn service_defaults() {
    let o = parse_json(
        br#"{"apiVersion": "trellis/v1", "kind": "Service",
             "metadata": {"name": "web", "namespace": "shop"},
             "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                      "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}}"#,
    )
    .unwrap();
    let AnyObject::Service(s) = &o else { panic!() };
    assert_eq!(s.spec.type_, ServiceType::ClusterIp);
    assert_eq!(s.spec.ports[0].target_port, Some(80));
    assert_eq!(s.spec.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.spec.ports[1].target_port, Some(5353));
    assert_eq!(s.spec.ports[1].protocol, Protocol::Udp);
    assert_eq!(s.spec.session_affinity_timeout_seconds, Some(10_800));
    assert_eq!(
        s.spec.external_traffic_policy,
        ExternalTrafficPolicy::Cluster
    );
    assert_eq!(s.spec.cluster_ip, None);
    assert!(s.spec.needs_cluster_ip());
    o.validate().unwrap();

    let AnyObject::Service(s) = parse_json(
        br#"{"apiVersion": "trellis/v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
             "spec": {"ports": [{"port": 80}]}}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(s.spec.session_affinity, SessionAffinity::None);
    assert_eq!(s.spec.session_affinity_timeout_seconds, None);
}

#[test]
fn endpoint_defaults() {
    let AnyObject::Endpoint(e) = parse_json(
        br#"{"apiVersion": "trellis/v1", "kind": "Endpoint", "metadata": {"name": "ep", "namespace": "default"},
             "spec": {"containerId": "abc", "ifname": "eth0", "network": "pods", "node": "n1", "ip": "10.244.1.2"}}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert!(e.spec.ready);
    assert_eq!(e.spec.mac, None);
    e.validate().unwrap();
}

fn full_objects() -> Vec<AnyObject> {
    let mut network = Network::new(
        ObjectMeta::named("pods"),
        NetworkSpec {
            backend: Backend::HostGw,
            mtu: Some(1500),
            tenant: Some("blue".into()),
            masquerade: false,
            reserved: vec!["10.244.0.0/28".parse().unwrap()],
            ..NetworkSpec::new("10.244.0.0/16".parse().unwrap())
        },
    );
    network.metadata.set_revision(7);
    network.metadata.creation_timestamp = Some("2024-05-01T12:00:00Z".into());
    let mut node = Node::new(
        ObjectMeta::named("node-1"),
        NodeSpec {
            address: "192.168.50.2".parse().unwrap(),
            bgp: None,
        },
    );
    node.metadata.labels.insert("zone".into(), "a".into());
    node.status = NodeStatus {
        ready: true,
        heartbeat_time: Some("2024-05-01T12:00:05Z".into()),
        leases: vec![SubnetLease {
            vtep_mac: Some("0a:58:0a:f4:01:01".into()),
            backend_data: Some(serde_json::json!({"port": 8472, "list": [1, 2]})),
            ..SubnetLease::new("pods", "10.244.1.0/24".parse().unwrap())
        }],
        unreachable_peers: vec!["node-2".into()],
        bgp: vec![],
        programmed: Some(ProgrammedRevisions {
            services: 12,
            endpoints: 14,
        }),
    };
    let pod = Pod::new(
        ObjectMeta::namespaced("default", "web-1"),
        PodSpec::default(),
    );
    let endpoint = Endpoint::new(
        ObjectMeta::namespaced("default", "web-1-eth0"),
        EndpointSpec {
            container_id: "abc123".into(),
            ifname: "eth0".into(),
            network: "pods".into(),
            node: "node-1".into(),
            ip: "10.244.1.5".parse().unwrap(),
            mac: Some("0a:58:0a:f4:01:05".into()),
            ready: false,
            pod_name: Some("web-1".into()),
        },
    );
    let mut service = Service::new(
        ObjectMeta::namespaced("shop", "web"),
        ServiceSpec {
            type_: ServiceType::LoadBalancer,
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(8080),
                protocol: Protocol::Tcp,
                node_port: Some(30080),
                app_protocol: None,
            }],
            cluster_ip: Some("10.96.0.10".into()),
            external_ips: vec!["192.168.50.9".parse().unwrap()],
            load_balancer_ip: Some("192.168.50.100".parse().unwrap()),
            session_affinity: SessionAffinity::ClientIp,
            session_affinity_timeout_seconds: Some(600),
            external_traffic_policy: ExternalTrafficPolicy::Local,
            external_name: None,
        },
    );
    service.status.load_balancer_ip = Some("192.168.50.100".parse().unwrap());
    vec![
        network.into(),
        node.into(),
        pod.into(),
        endpoint.into(),
        service.into(),
    ]
}

#[test]
fn json_round_trip() {
    for o in full_objects() {
        o.validate().unwrap();
        let bytes = o.to_json();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["apiVersion"], "trellis/v1");
        assert_eq!(v["kind"], o.kind().as_str());
        assert_eq!(o.to_value(), v);
        let back = parse_json(&bytes).unwrap();
        assert_eq!(back, o, "{}", String::from_utf8_lossy(&bytes));
        // serde on AnyObject works too.
        let back: AnyObject = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, o);
    }
}

#[test]
fn serialized_form() {
    let objects = full_objects();
    let v = objects[0].to_value();
    assert_eq!(
        v,
        serde_json::json!({
            "apiVersion": "trellis/v1",
            "kind": "Network",
            "metadata": {"name": "pods", "resourceVersion": "7", "creationTimestamp": "2024-05-01T12:00:00Z"},
            "spec": {"cidr": "10.244.0.0/16", "nodeSubnetPrefix": 24, "backend": "host-gw",
                     "mtu": 1500, "tenant": "blue", "masquerade": false, "reserved": ["10.244.0.0/28"]}
        })
    );
    let v = objects[4].to_value();
    assert_eq!(v["spec"]["type"], "LoadBalancer");
    assert_eq!(v["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(v["spec"]["externalIPs"][0], "192.168.50.9");
    assert_eq!(v["spec"]["loadBalancerIP"], "192.168.50.100");
    assert_eq!(v["spec"]["sessionAffinity"], "ClientIP");
    assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(v["status"]["loadBalancerIP"], "192.168.50.100");
    let v = objects[1].to_value();
    assert_eq!(v["status"]["leases"][0]["vtepMac"], "0a:58:0a:f4:01:01");
    assert_eq!(v["status"]["unreachablePeers"][0], "node-2");
    assert_eq!(v["status"]["heartbeatTime"], "2024-05-01T12:00:05Z");
    // A default status is left out.
    let v = objects[2].to_value();
    assert_eq!(
        v,
        serde_json::json!({"apiVersion": "trellis/v1", "kind": "Pod",
                           "metadata": {"name": "web-1", "namespace": "default"}, "spec": {}})
    );
}

#[test]
fn server_set_fields() {
    let mut o = parse_json(NETWORK.as_bytes()).unwrap();
    o.metadata_mut().set_revision(42);
    o.metadata_mut()
        .set_creation_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400));
    assert_eq!(o.metadata().revision(), Some(42));
    let v = o.to_value();
    assert_eq!(v["metadata"]["resourceVersion"], "42");
    assert_eq!(v["metadata"]["creationTimestamp"], "1970-01-02T00:00:00Z");
    o.validate().unwrap();
}

const MULTI: &str = r#"
# A network and a service.
apiVersion: trellis/v1
kind: Network
metadata:
  name: pods
spec:
  cidr: 10.244.0.0/16
  backend: vxlan
  vni: 4096
---
apiVersion: trellis/v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels:
    app.kubernetes.io/name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: 8080
      nodePort: 30080
---
---
apiVersion: trellis/v1
kind: Pod
metadata:
  name: web-1
"#;

#[test]
fn yaml_multi_document() {
    let objs = parse_yaml(MULTI).unwrap();
    let kinds: Vec<_> = objs.iter().map(AnyObject::kind).collect();
    assert_eq!(kinds, [Kind::Network, Kind::Service, Kind::Pod]);
    let AnyObject::Network(n) = &objs[0] else {
        panic!()
    };
    assert_eq!(n.spec.vni, Some(4096));
    assert_eq!(n.spec.node_subnet_prefix, 24);
    let AnyObject::Service(s) = &objs[1] else {
        panic!()
    };
    assert_eq!(s.spec.ports[0].node_port, Some(30080));
    assert_eq!(s.metadata.labels["app.kubernetes.io/name"], "web");
    for o in &objs[..2] {
        o.validate().unwrap();
    }
    // Bytes work as well as str.
    assert_eq!(parse_yaml(MULTI.as_bytes()).unwrap(), objs);
    // Empty streams hold no objects.
    assert!(parse_yaml("").unwrap().is_empty());
    assert!(parse_yaml("---\n").unwrap().is_empty());
}

#[test]
fn yaml_round_trip() {
    let objects = full_objects();
    let mut stream = String::new();
    for o in &objects {
        stream.push_str("---\n");
        stream.push_str(&serde_yaml_ng::to_string(o).unwrap());
    }
    assert_eq!(parse_yaml(&stream).unwrap(), objects, "{stream}");
}

#[test]
fn yaml_errors_match_json() {
    let yaml = "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: pods}\nspec:\n  cidrr: 10.244.0.0/16\n";
    let json = r#"{"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "pods"}, "spec": {"cidrr": "10.244.0.0/16"}}"#;
    let y = parse_yaml(yaml).unwrap_err();
    assert_eq!(y, json_err(json));
    assert_err(&y, "spec.cidrr", "unknown field `cidrr`");

    // Several documents: the message says which one.
    let stream = format!("{NETWORK}\n---\n{yaml}");
    let e = parse_yaml(&stream).unwrap_err();
    assert_err(&e, "spec.cidrr", "(YAML document 2)");

    let e = parse_yaml("kind: Foo\napiVersion: trellis/v1\n").unwrap_err();
    assert_err(&e, "kind", "unknown kind \"Foo\"");
    let e = parse_yaml("kind: Pod\napiVersion: trellis/v2\nmetadata: {name: x}\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"apiVersion: must be "trellis/v1" (or "v1") for Pod, got "trellis/v2""#
    );

    let e = parse_yaml("kind: Pod\nmetadata: [\n").unwrap_err();
    assert_err(&e, "", "invalid YAML (document 1)");

    let e = parse_yaml(
        "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: n}\nspec: {cidr: 10.0.0.0/8, nodeSubnetPrefix: x}\n",
    )
    .unwrap_err();
    assert_err(
        &e,
        "spec.nodeSubnetPrefix",
        "invalid type: string \"x\", expected u8",
    );
    // YAML 1.2: `yes` is a string, not a boolean.
    let e = parse_yaml(
        "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: n}\nspec: {cidr: 10.0.0.0/8, masquerade: yes}\n",
    )
    .unwrap_err();
    assert_err(&e, "spec.masquerade", "expected a boolean");
}
