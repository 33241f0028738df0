//! The kubectl-like client commands: `apply`, `get`, `delete`, `watch`, `api-resources`
//! and `config`.
//!
//! They talk to `trellis server` through [`trellis_client`], configured by the JSON
//! config file ([`Config::default_path`], or `--config`) with `--server`, `--token` and
//! `--ca` overriding it. Manifests are read with the same parser the server uses
//! ([`trellis_api::objects`]) and checked locally before anything is sent.
//!
//! Exit status: 0 on success, 1 on any error (`error: <message>` on stderr; a missing
//! object is reported as `Error from server (NotFound): <message>`, and a stale
//! `metadata.resourceVersion` in an applied manifest as `Error from server (Conflict):
//! <object> (<origin>): <message>`, like kubectl).

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde_json::Value;
use trellis_api::objects::{self, AnyObject, Kind, DEFAULT_NAMESPACE};
use trellis_api::watch::{ObjectHead, WatchEvent};
use trellis_client::{list_path, object_path, Client, ClientError, Config};

use crate::cli_table::{align, table, Extra};

/// How often `apply` re-reads and retries an update that lost a race (409 Conflict).
const APPLY_ATTEMPTS: usize = 5;

/// The client subcommands (flattened into the top level of `trellis`).
#[derive(clap::Subcommand, Debug)]
pub enum CliCmd {
    /// Create or update objects from manifests (YAML or JSON, several documents).
    Apply(ApplyArgs),
    /// Show objects: a table, or `-o json|yaml|wide|name`.
    Get(GetArgs),
    /// Delete objects by kind and name, or those of a manifest (`-f`).
    Delete(DeleteArgs),
    /// Print one line per change of a kind's objects until interrupted.
    Watch(WatchArgs),
    /// The kinds of object: name, short name, apiVersion, scope (no server needed).
    ApiResources,
    /// The config file: `set` (server, CA, token) and `view`.
    #[command(subcommand)]
    Config(ConfigCmd),
}

/// How to reach the server: the config file, and flags overriding it.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// The config file [default: $TRELLIS_CONFIG, else ~/.trellis/config.json].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The server URL (`https://host:port`), overriding the config file.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The bearer token, overriding the config file.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The cluster CA (PEM file), overriding the config file.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl ConnArgs {
    /// The config file path.
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(Config::default_path)
    }

    /// The config file with the flags applied. A missing file is fine when `--server`
    /// says where to go.
    fn resolve(&self) -> anyhow::Result<Config> {
        let path = self.config_path();
        let mut cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(_) if !path.exists() && self.server.is_some() => Config::default(),
            Err(_) if !path.exists() => bail!(
                "no config file {} (run `trellis config set --server URL --ca FILE \
                 --token-file FILE`, or pass --server)",
                path.display()
            ),
            Err(e) => return Err(e.into()),
        };
        if let Some(s) = &self.server {
            cfg.server = s.clone();
        }
        if let Some(t) = &self.token {
            cfg.token = Some(t.clone());
            cfg.token_file = None;
        }
        if let Some(ca) = &self.ca {
            cfg.ca = Some(ca.clone());
        }
        if cfg.server.is_empty() {
            bail!("{}: no server set", path.display());
        }
        Ok(cfg)
    }

    /// A client for the resolved config.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.resolve()?)?)
    }
}

/// The namespace flag.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct NsArgs {
    /// The namespace of namespaced objects [default: default].
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
}

impl NsArgs {
    /// `-n`, else `default`.
    pub(crate) fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// `trellis apply`.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    ns: NsArgs,
    /// Manifest file (YAML or JSON, `---`-separated documents, or a List); `-` for stdin.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<String>,
}

/// Output formats of `get`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The table with extra columns.
    Wide,
    /// The object (or a List) as YAML.
    Yaml,
    /// The object (or a List) as pretty JSON.
    Json,
    /// `kind/name` per object.
    Name,
}

/// `trellis get`.
#[derive(clap::Args, Debug)]
#[command(after_help = kinds_help())]
pub struct GetArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    ns: NsArgs,
    /// Across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Only objects with these labels (`key=value,...`).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    output: Option<Output>,
    /// Kind: plural, singular or short name (listed below); or `KIND/NAME`.
    kind: String,
    /// Object names (all objects when none).
    names: Vec<String>,
}

/// `trellis delete`.
#[derive(clap::Args, Debug)]
#[command(after_help = kinds_help())]
pub struct DeleteArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    ns: NsArgs,
    /// Delete the objects of this manifest (`-` for stdin). Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "args"
    )]
    files: Vec<String>,
    /// An object that does not exist is not an error.
    #[arg(long)]
    ignore_not_found: bool,
    /// `KIND NAME...`, or `KIND/NAME...` (kinds listed below).
    #[arg(required_unless_present = "files")]
    args: Vec<String>,
}

/// `trellis watch`.
#[derive(clap::Args, Debug)]
#[command(after_help = kinds_help())]
pub struct WatchArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    ns: NsArgs,
    /// Across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// `json`: print the raw event lines.
    #[arg(short = 'o', long, value_parser = ["json"])]
    output: Option<String>,
    /// Kind: plural, singular or short name (listed below).
    kind: String,
}

/// `trellis config`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Write the config file (readable by its owner only); fields not given are kept.
    Set(ConfigSetArgs),
    /// Print the config file, the token redacted.
    View(ConfigViewArgs),
}

/// `trellis config set`.
#[derive(clap::Args, Debug)]
pub struct ConfigSetArgs {
    /// The config file [default: $TRELLIS_CONFIG, else ~/.trellis/config.json].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The server URL (`https://host:port`, or `http://` for `--insecure-http`).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The cluster CA file (`ca.pem` of `trellis server init`).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The bearer token.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// `trellis config view`.
#[derive(clap::Args, Debug)]
pub struct ConfigViewArgs {
    /// The config file [default: $TRELLIS_CONFIG, else ~/.trellis/config.json].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Run a client subcommand.
pub fn run(cmd: CliCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CliCmd::Apply(a) => block_on(apply(a)),
        CliCmd::Get(a) => block_on(get(a)),
        CliCmd::Delete(a) => block_on(delete(a)),
        CliCmd::Watch(a) => block_on(watch(a)),
        CliCmd::ApiResources => {
            emit(&api_resources())?;
            Ok(ExitCode::SUCCESS)
        }
        CliCmd::Config(c) => config(c),
    }
}

/// Run `f` on a single-threaded runtime.
fn block_on(
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Success unless something failed.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Write to stdout (flushed: a watch's reader sees each line at once). An error, such
/// as a closed pipe, is returned rather than a panic.
fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Print `error: <msg>` to stderr.
fn report(msg: impl std::fmt::Display) {
    eprintln!("error: {msg}");
}

/// An API error with its reason (`... (Forbidden)`); other errors as they are.
pub(crate) fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Api {
            reason, message, ..
        } => format!("{message} ({reason})"),
        e => e.to_string(),
    }
}

/// Whether `e` is the server's answer with this reason.
fn has_reason(e: &ClientError, want: &str) -> bool {
    matches!(e, ClientError::Api { reason, .. } if reason == want)
}

/// Report an error of one object: NotFound the kubectl way, others as `error: id: …`.
fn report_object_error(id: &str, e: &ClientError) {
    match e {
        ClientError::Api {
            reason, message, ..
        } if reason == "NotFound" => eprintln!("Error from server (NotFound): {message}"),
        e => report(format_args!("{id}: {}", describe(e))),
    }
}

// ---- kinds and names

/// A kind from what a user types: plural, singular or short name, any case.
fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    let s = s.to_ascii_lowercase();
    Kind::ALL
        .into_iter()
        .find(|k| s == k.plural() || s == k.as_str().to_ascii_lowercase() || s == short_name(*k))
        .ok_or_else(|| {
            let known: Vec<String> = Kind::ALL
                .iter()
                .map(|k| format!("{} ({})", k.plural(), short_name(*k)))
                .collect();
            anyhow!("unknown resource type {s:?} (known: {})", known.join(", "))
        })
}

/// The short name of a kind, as kubectl has them.
fn short_name(k: Kind) -> &'static str {
    k.short_name().unwrap_or_else(|| k.plural())
}

/// The kinds as `get`, `delete` and `watch --help` list them: one line each, plural and
/// short name.
fn kinds_help() -> String {
    let mut out = String::from(
        "Kinds (plural, singular or short name, any case; `trellis api-resources` has more):\n",
    );
    for k in Kind::ALL {
        let _ = writeln!(out, "  {:<24}{}", k.plural(), short_name(k));
    }
    out
}

/// `trellis api-resources`: NAME (plural), SHORTNAMES, APIVERSION (`trellis/v1`, and
/// the Kubernetes apiVersion accepted as well), NAMESPACED, KIND, one row per kind,
/// like kubectl's.
fn api_resources() -> String {
    let header: Vec<String> = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .map(|k| {
            let versions = std::iter::once(objects::API_VERSION)
                .chain(k.foreign_api_version())
                .collect::<Vec<_>>()
                .join(",");
            vec![
                k.plural().to_string(),
                k.short_name().unwrap_or("-").to_string(),
                versions,
                k.namespaced().to_string(),
                k.as_str().to_string(),
            ]
        })
        .collect();
    align(&header, &rows)
}

/// `service/web`: how results name an object.
fn object_id(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str().to_ascii_lowercase())
}

/// The namespace a request for `kind` goes to (`None` for cluster-scoped kinds).
fn ns_for(kind: Kind, ns: &str) -> Option<&str> {
    kind.namespaced().then_some(ns)
}

/// `KIND NAME...` or `KIND/NAME...` → (kind, name) pairs. `KIND` alone gives no pair.
fn parse_targets(args: &[String]) -> anyhow::Result<(Kind, Vec<String>)> {
    let Some(first) = args.first() else {
        bail!("name a resource type");
    };
    if !first.contains('/') {
        return Ok((parse_kind(first)?, args[1..].to_vec()));
    }
    let mut kind = None;
    let mut names = Vec::new();
    for a in args {
        let (k, n) = a
            .split_once('/')
            .ok_or_else(|| anyhow!("{a:?}: mix of KIND/NAME and plain names"))?;
        let k = parse_kind(k)?;
        if kind.is_some_and(|prev| prev != k) {
            bail!("{a:?}: all KIND/NAME arguments must be of one kind");
        }
        if n.is_empty() {
            bail!("{a:?}: the name is empty");
        }
        kind = Some(k);
        names.push(n.to_string());
    }
    Ok((kind.expect("args is not empty"), names))
}

// ---- manifests

/// One object read from a manifest, with where it came from for error messages.
#[derive(Debug)]
struct Manifest {
    /// `FILE: document N` (and `, item M` inside a List).
    origin: String,
    /// The object, its namespace filled in.
    obj: AnyObject,
}

impl Manifest {
    /// `service/web`.
    fn id(&self) -> String {
        object_id(self.obj.kind(), self.obj.name())
    }

    /// The object's list path (where it is created).
    fn list_path(&self) -> String {
        list_path(self.obj.kind(), self.obj.namespace())
    }

    /// The object's own path.
    fn path(&self) -> String {
        object_path(self.obj.kind(), self.obj.namespace(), self.obj.name())
    }
}

/// Read a file, or stdin for `-`.
fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        buf = std::fs::read(file).with_context(|| file.to_string())?;
    }
    Ok(buf)
}

/// How messages name an input: the file, or `<stdin>` for `-`.
fn display_name(file: &str) -> &str {
    if file == "-" {
        "<stdin>"
    } else {
        file
    }
}

/// Split an input into its documents: a JSON stream when it starts with `{` or `[`,
/// YAML `---`-separated documents otherwise. A syntax error ends the input.
fn documents(bytes: &[u8]) -> Vec<Result<Value, String>> {
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if json {
        let mut docs = Vec::new();
        for v in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>() {
            let stop = v.is_err();
            docs.push(v.map_err(|e| format!("invalid JSON: {e}")));
            if stop {
                break;
            }
        }
        docs
    } else {
        objects::yaml_documents(bytes)
            .into_iter()
            .map(|d| d.map_err(|e| format!("invalid YAML: {e}")))
            .collect()
    }
}

/// The objects of one document: itself, or the items of a list (a JSON array or a
/// `kind: …List` object with `items`). Empty documents hold none.
fn expand(doc: Value) -> Vec<(Option<usize>, Value)> {
    let is_list = doc["kind"].as_str().is_some_and(|k| k.ends_with("List"));
    match doc {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Some(i + 1), v))
            .collect(),
        Value::Object(mut m) if is_list => match m.remove("items") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Some(i + 1), v))
                .collect(),
            _ => vec![(None, Value::Object(m))],
        },
        v => vec![(None, v)],
    }
}

/// Parse and check every object of `files`: all of them, or every error (each naming the
/// file, the document and the field). The namespace of namespaced objects defaults to
/// `-n`; an object naming another namespace than an explicit `-n` is an error.
fn load_manifests(files: &[String], ns: &NsArgs) -> Result<Vec<Manifest>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let bytes = match read_input(file) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let name = display_name(file);
        for (d, doc) in documents(&bytes).into_iter().enumerate() {
            let doc = match doc {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{name}: document {}: {e}", d + 1));
                    continue;
                }
            };
            for (item, v) in expand(doc) {
                let origin = match item {
                    Some(i) => format!("{name}: document {}, item {i}", d + 1),
                    None => format!("{name}: document {}", d + 1),
                };
                match check_object(v, ns) {
                    Ok(obj) => out.push(Manifest { origin, obj }),
                    Err(e) => errors.push(format!("{origin}: {e}")),
                }
            }
        }
    }
    if out.is_empty() && errors.is_empty() {
        let names: Vec<&str> = files.iter().map(|f| display_name(f)).collect();
        errors.push(format!("{}: no objects found", names.join(", ")));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// One manifest object: parsed, namespace filled, validated.
fn check_object(v: Value, ns: &NsArgs) -> Result<AnyObject, String> {
    let mut obj = AnyObject::from_value(v).map_err(|e| e.to_string())?;
    let id = object_id(obj.kind(), obj.name());
    if let (Some(want), Some(have)) = (&ns.namespace, obj.namespace()) {
        if obj.kind().namespaced() && want != have {
            return Err(format!(
                "{id}: metadata.namespace: {have:?} does not match --namespace {want:?}"
            ));
        }
    }
    obj.default_namespace(ns.ns());
    obj.validate().map_err(|e| format!("{id}: {e}"))?;
    Ok(obj)
}

/// [`load_manifests`], reporting the errors.
fn load_or_report(files: &[String], ns: &NsArgs) -> Option<Vec<Manifest>> {
    match load_manifests(files, ns) {
        Ok(m) => Some(m),
        Err(errors) => {
            for e in &errors {
                report(e);
            }
            eprintln!("nothing was sent to the server");
            None
        }
    }
}

// ---- apply

/// `trellis apply -f FILE`.
async fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(manifests) = load_or_report(&a.files, &a.ns) else {
        return Ok(ExitCode::FAILURE);
    };
    let client = a.conn.client()?;
    let mut ok = true;
    for m in &manifests {
        match apply_one(&client, m).await {
            Ok(result) => emit(&format!("{} {result}\n", m.id()))?,
            Err(ClientError::Api {
                reason, message, ..
            }) if reason == "Conflict" => {
                ok = false;
                // kubectl's form, naming the object and where its manifest came from.
                let hint = match &m.obj.metadata().resource_version {
                    Some(rv) => format!(
                        " (the manifest's metadata.resourceVersion is {rv}: get the object \
                         again and re-apply your change, or remove resourceVersion from the \
                         manifest to apply over the current version)"
                    ),
                    None => String::new(),
                };
                eprintln!(
                    "Error from server (Conflict): {} ({}): {message}{hint}",
                    m.id(),
                    m.origin
                );
            }
            Err(e) => {
                ok = false;
                report(format_args!("{} ({}): {}", m.id(), m.origin, describe(&e)));
            }
        }
    }
    Ok(exit(ok))
}

/// Create the object, or update it when it exists: `created`, `configured` or
/// `unchanged`. Status is left to the server (a manifest's `status` is not sent).
///
/// A manifest with `metadata.resourceVersion` (what `get -o yaml` prints) is applied
/// only at that version, as kubectl does: the update carries it and the server refuses a
/// stale one (409 Conflict), so a concurrent change is never silently overwritten; an
/// object gone meanwhile is a conflict too, not created again. Without one, the update
/// goes over the current version (re-read and retried when it races).
async fn apply_one(client: &Client, m: &Manifest) -> Result<&'static str, ClientError> {
    let mut body = m.obj.to_value();
    if let Some(o) = body.as_object_mut() {
        o.remove("status");
    }
    if let Some(rv) = &m.obj.metadata().resource_version {
        return apply_at_version(client, m, &body, rv).await;
    }
    let mut exists = false;
    let mut last = None;
    for _ in 0..APPLY_ATTEMPTS {
        if !exists {
            match client.post(&m.list_path(), &body).await {
                Ok(_) => return Ok("created"),
                Err(e) if has_reason(&e, "AlreadyExists") => {}
                Err(e) => return Err(e),
            }
        }
        let current = match client.get(&m.path()).await {
            Ok(v) => v,
            Err(e) if has_reason(&e, "NotFound") => {
                // Deleted since: create it again.
                exists = false;
                continue;
            }
            Err(e) => return Err(e),
        };
        exists = true;
        if unchanged(&m.obj, &current) {
            return Ok("unchanged");
        }
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        match client.put(&m.path(), &body).await {
            Ok(_) => return Ok("configured"),
            Err(e) if has_reason(&e, "Conflict") => last = Some(e),
            Err(e) if has_reason(&e, "NotFound") => exists = false,
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Api {
        status: 409,
        reason: "Conflict".into(),
        message: format!("{}: kept changing while applying; retry", m.id()),
    }))
}

/// [`apply_one`] for a manifest naming resourceVersion `rv` (in `body`): one update at
/// that version. `unchanged` when the object already is as the manifest wants it
/// (nothing is written, so nothing is overwritten).
async fn apply_at_version(
    client: &Client,
    m: &Manifest,
    body: &Value,
    rv: &str,
) -> Result<&'static str, ClientError> {
    let current = match client.get(&m.path()).await {
        Ok(v) => v,
        Err(e) if has_reason(&e, "NotFound") => {
            return Err(ClientError::Api {
                status: 409,
                reason: "Conflict".into(),
                message: format!(
                    "{} {:?} does not exist (deleted since resourceVersion {rv} was read?)",
                    m.obj.kind(),
                    m.obj.name()
                ),
            })
        }
        Err(e) => return Err(e),
    };
    if unchanged(&m.obj, &current) {
        return Ok("unchanged");
    }
    client.put(&m.path(), body).await.map(|_| "configured")
}

/// Whether applying `want` would change nothing: its spec (with what the server
/// allocated filled in where the manifest leaves it to the server) and labels equal the
/// stored object's.
fn unchanged(want: &AnyObject, current: &Value) -> bool {
    let Ok(cur) = AnyObject::from_value(current.clone()) else {
        return false;
    };
    let mut want = want.clone();
    fill_allocated(&mut want, &cur);
    // The server labels every Namespace with its name.
    if let AnyObject::Namespace(n) = &mut want {
        n.add_name_label();
    }
    let (w, c) = (want.to_value(), cur.to_value());
    w["spec"] == c["spec"] && w["metadata"]["labels"] == c["metadata"]["labels"]
}

/// Copy into `want` the fields the server allocates and keeps on update when a manifest
/// leaves them out: a Service's clusterIP, and each port's nodePort (kept for the same
/// port and protocol). A Network's VNI lives in its status, so needs nothing.
fn fill_allocated(want: &mut AnyObject, cur: &AnyObject) {
    let (AnyObject::Service(w), AnyObject::Service(c)) = (want, cur) else {
        return;
    };
    if w.spec.needs_cluster_ip() {
        w.spec.cluster_ip = c.spec.cluster_ip.clone();
    }
    if w.spec.type_.has_node_ports() {
        for p in w.spec.ports.iter_mut().filter(|p| p.node_port.is_none()) {
            p.node_port = c
                .spec
                .ports
                .iter()
                .find(|o| o.port == p.port && o.protocol == p.protocol)
                .and_then(|o| o.node_port);
        }
    }
}

// ---- get

/// `trellis get KIND [NAME...]`.
async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let mut args = vec![a.kind.clone()];
    args.extend(a.names.iter().cloned());
    let (kind, names) = parse_targets(&args)?;
    if a.all_namespaces && !names.is_empty() {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    let client = a.conn.client()?;
    let ns = ns_for(kind, a.ns.ns());
    let mut ok = true;
    let items: Vec<Value> = if names.is_empty() {
        let mut path = list_path(kind, if a.all_namespaces { None } else { ns });
        if let Some(sel) = &a.selector {
            path.push_str(&format!("?labelSelector={sel}"));
        }
        let list = client.get(&path).await.map_err(|e| anyhow!(describe(&e)))?;
        if matches!(a.output, Some(Output::Json | Output::Yaml)) {
            print_value(&list, a.output)?;
            return Ok(ExitCode::SUCCESS);
        }
        list["items"].as_array().cloned().unwrap_or_default()
    } else {
        let mut items = Vec::new();
        for name in &names {
            match client.get(&object_path(kind, ns, name)).await {
                Ok(v) => items.push(v),
                Err(e) => {
                    ok = false;
                    report_object_error(&object_id(kind, name), &e);
                }
            }
        }
        if matches!(a.output, Some(Output::Json | Output::Yaml)) {
            if let [one] = items.as_slice() {
                print_value(one, a.output)?;
            } else if !items.is_empty() {
                let list = serde_json::json!({
                    "apiVersion": objects::API_VERSION,
                    "kind": "List",
                    "items": items,
                });
                print_value(&list, a.output)?;
            }
            return Ok(exit(ok));
        }
        items
    };
    if items.is_empty() {
        if ok {
            match ns {
                Some(ns) if !a.all_namespaces => {
                    eprintln!("No resources found in {ns} namespace.")
                }
                _ => eprintln!("No resources found"),
            }
        }
        return Ok(exit(ok));
    }
    let objs = items
        .into_iter()
        .map(|v| {
            AnyObject::from_value(v)
                .map_err(|e| anyhow!("the server sent a {} that does not parse: {e}", kind))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wide = a.output == Some(Output::Wide);
    let extra = match a.output {
        Some(Output::Name) => Extra::default(),
        _ => Extra::fetch(&client, kind, wide).await?,
    };
    let text = match a.output {
        Some(Output::Name) => objs
            .iter()
            .map(|o| object_id(o.kind(), o.name()) + "\n")
            .collect(),
        _ => table(
            &objs,
            wide,
            a.all_namespaces && kind.namespaced(),
            &extra,
            SystemTime::now(),
        ),
    };
    emit(&text)?;
    Ok(exit(ok))
}

/// Print a value as pretty JSON or YAML.
fn print_value(v: &Value, output: Option<Output>) -> anyhow::Result<()> {
    let text = match output {
        Some(Output::Yaml) => serde_yaml_ng::to_string(v)?,
        _ => serde_json::to_string_pretty(v)? + "\n",
    };
    Ok(emit(&text)?)
}

// ---- delete

/// `trellis delete KIND NAME...` / `trellis delete -f FILE`.
async fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let targets: Vec<(Kind, Option<String>, String)> = if a.files.is_empty() {
        let (kind, names) = parse_targets(&a.args)?;
        if names.is_empty() {
            bail!("name the {} to delete", kind.plural());
        }
        let ns = ns_for(kind, a.ns.ns()).map(str::to_string);
        names.into_iter().map(|n| (kind, ns.clone(), n)).collect()
    } else {
        let Some(manifests) = load_or_report(&a.files, &a.ns) else {
            return Ok(ExitCode::FAILURE);
        };
        manifests
            .into_iter()
            .map(|m| {
                let ns = m.obj.namespace().map(str::to_string);
                (m.obj.kind(), ns, m.obj.name().to_string())
            })
            .collect()
    };
    let client = a.conn.client()?;
    let mut ok = true;
    for (kind, ns, name) in &targets {
        let id = object_id(*kind, name);
        match client
            .delete(&object_path(*kind, ns.as_deref(), name))
            .await
        {
            Ok(_) => emit(&format!("{id} deleted\n"))?,
            Err(e) if a.ignore_not_found && has_reason(&e, "NotFound") => {}
            Err(e) => {
                ok = false;
                report_object_error(&id, &e);
            }
        }
    }
    Ok(exit(ok))
}

// ---- watch

/// `trellis watch KIND`: the current objects as ADDED, then every change, until Ctrl-C
/// or the server ends the stream.
async fn watch(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(&a.kind)?;
    let client = a.conn.client()?;
    // Installed before the first event, so Ctrl-C always ends the watch cleanly.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let ns = if a.all_namespaces {
        None
    } else {
        ns_for(kind, a.ns.ns())
    };
    let mut events = client
        .watch(&list_path(kind, ns), None, false)
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    let raw = a.output.is_some();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        };
        let Some(ev) = ev else {
            return Ok(ExitCode::SUCCESS);
        };
        let ev = ev.map_err(|e| anyhow!(describe(&e)))?;
        let line = if raw {
            Some(ev.to_string())
        } else {
            event_line(kind, ev)?
        };
        if let Some(line) = line {
            match emit(&(line + "\n")) {
                Ok(()) => {}
                // The reader went away (`trellis watch … | head`): done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS)
                }
                Err(e) => return Err(anyhow!("stdout: {e}")),
            }
        }
    }
}

/// The line of one watch event: `ADDED service/default/web rv=12`; `None` for
/// bookmarks; an ERROR event, or a line that is no event, is an error.
fn event_line(kind: Kind, ev: Value) -> anyhow::Result<Option<String>> {
    let ev: WatchEvent<Value> = serde_json::from_value(ev)
        .map_err(|e| anyhow!("the server sent a watch line that is no event: {e}"))?;
    let line = |ty: &str, obj: &Value| {
        let head = ObjectHead::of(obj);
        let m = &head.metadata;
        let id = match &m.namespace {
            Some(ns) => format!("{}/{ns}/{}", kind.as_str().to_ascii_lowercase(), m.name),
            None => object_id(kind, &m.name),
        };
        let rv = m.resource_version.as_deref().unwrap_or("?");
        Some(format!("{ty} {id} rv={rv}"))
    };
    Ok(match &ev {
        WatchEvent::Bookmark { .. } => None,
        WatchEvent::Error { object } => bail!(
            "watch ended by the server: {}",
            object["message"].as_str().unwrap_or("unknown error")
        ),
        WatchEvent::Resync {
            resource_version,
            items,
        } => Some(format!(
            "RESYNC {} rv={resource_version} objects={}",
            kind.plural(),
            items.len()
        )),
        WatchEvent::Added { object } => line("ADDED", object),
        WatchEvent::Modified { object } => line("MODIFIED", object),
        WatchEvent::Deleted { object } => line("DELETED", object),
    })
}

// ---- config

/// `trellis config set|view`.
fn config(c: ConfigCmd) -> anyhow::Result<ExitCode> {
    match c {
        ConfigCmd::Set(a) => {
            let path = a.config.clone().unwrap_or_else(Config::default_path);
            let mut cfg = if path.exists() {
                Config::load(&path)?
            } else {
                Config::default()
            };
            if let Some(s) = a.server {
                cfg.server = s;
            }
            if cfg.server.is_empty() {
                bail!("--server is required (no server in {})", path.display());
            }
            if let Some(ca) = a.ca {
                cfg.ca = Some(absolute_file(&ca, "--ca")?);
            }
            if let Some(t) = a.token {
                cfg.token = Some(t);
                cfg.token_file = None;
            }
            if let Some(f) = a.token_file {
                cfg.token_file = Some(absolute_file(&f, "--token-file")?);
                cfg.token = None;
            }
            cfg.save(&path)?;
            emit(&format!("wrote {}\n", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::View(a) => {
            let path = a.config.unwrap_or_else(Config::default_path);
            let mut cfg = Config::load(&path)?;
            if cfg.token.is_some() {
                cfg.token = Some("REDACTED".into());
            }
            emit(&(serde_json::to_string_pretty(&cfg)? + "\n"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An existing file's absolute path, so the config works from any directory.
fn absolute_file(p: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    p.canonicalize()
        .with_context(|| format!("{flag} {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_any_name() {
        for (s, k) in [
            ("svc", Kind::Service),
            ("Services", Kind::Service),
            ("SERVICE", Kind::Service),
            ("net", Kind::Network),
            ("no", Kind::Node),
            ("nodes", Kind::Node),
            ("po", Kind::Pod),
            ("pod", Kind::Pod),
            ("ep", Kind::Endpoint),
            ("endpoints", Kind::Endpoint),
        ] {
            assert_eq!(parse_kind(s).unwrap(), k, "{s}");
        }
        assert!(parse_kind("ingress").is_ok());
        assert!(parse_kind("gateway").is_err());
    }

    #[test]
    fn api_resources_lists_every_kind() {
        let text = api_resources();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), Kind::ALL.len(), "{text}");
        let row = |kind: &str| {
            rows.iter()
                .find(|r| r[4] == kind)
                .unwrap_or_else(|| panic!("no {kind}: {text}"))
                .clone()
        };
        assert_eq!(
            row("Service"),
            ["services", "svc", "trellis/v1", "true", "Service"]
        );
        assert_eq!(
            row("Network"),
            ["networks", "net", "trellis/v1", "false", "Network"]
        );
        assert_eq!(
            row("NetworkPolicy"),
            [
                "networkpolicies",
                "netpol",
                "trellis/v1,networking.k8s.io/v1",
                "true",
                "NetworkPolicy"
            ]
        );
        assert_eq!(row("Pod")[2], "trellis/v1,v1");
        // Every name the table shows is one `get` accepts.
        for r in &rows {
            assert_eq!(parse_kind(r[0]).unwrap().as_str(), r[4]);
            if r[1] != "-" {
                assert_eq!(parse_kind(r[1]).unwrap().as_str(), r[4]);
            }
        }
        let help = kinds_help();
        for k in Kind::ALL {
            assert!(
                help.lines()
                    .any(|l| l.split_whitespace().eq([k.plural(), short_name(k)])),
                "{help}"
            );
        }
    }

    #[test]
    fn targets() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (k, n) = parse_targets(&a(&["svc", "a", "b"])).unwrap();
        assert_eq!((k, n), (Kind::Service, a(&["a", "b"])));
        let (k, n) = parse_targets(&a(&["svc/a", "service/b"])).unwrap();
        assert_eq!((k, n), (Kind::Service, a(&["a", "b"])));
        assert!(parse_targets(&a(&["svc/a", "po/b"])).is_err());
        assert!(parse_targets(&a(&["svc/a", "b"])).is_err());
    }

    #[test]
    fn manifests_are_checked_with_their_origin() {
        let yaml = "apiVersion: trellis/v1\nkind: Pod\nmetadata: {name: ok}\n---\n\
                    apiVersion: trellis/v1\nkind: Service\nmetadata: {name: s}\nspec: {portz: []}\n";
        let docs = documents(yaml.as_bytes());
        assert_eq!(docs.len(), 2);
        let ns = NsArgs { namespace: None };
        let v = docs.into_iter().map(Result::unwrap).collect::<Vec<_>>();
        assert!(check_object(v[0].clone(), &ns).is_ok());
        let e = check_object(v[1].clone(), &ns).unwrap_err();
        assert!(e.contains("spec.portz"), "{e}");
        // A List expands into its items; a JSON stream into its objects.
        let list = serde_json::json!({"kind": "PodList", "items": [{"a": 1}, {"b": 2}]});
        assert_eq!(expand(list).len(), 2);
        assert_eq!(documents(b" {\"a\":1} {\"b\":2}").len(), 2);
        // An explicit -n that disagrees with the manifest.
        let ns = NsArgs {
            namespace: Some("other".into()),
        };
        let pod = serde_json::json!({"apiVersion": "trellis/v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"}});
        assert!(check_object(pod, &ns).unwrap_err().contains("namespace"));
    }

    #[test]
    fn unchanged_ignores_allocations_only() {
        let svc = |extra: &str| {
            objects::parse_yaml(&format!(
                "apiVersion: trellis/v1\nkind: Service\nmetadata: {{name: s, namespace: default}}\n\
                 spec: {{type: NodePort, ports: [{{port: 80{extra}}}]}}\n"
            ))
            .unwrap()
            .remove(0)
        };
        let mut stored = svc(", nodePort: 31000").to_value();
        stored["spec"]["clusterIP"] = "10.96.0.5".into();
        assert!(unchanged(&svc(""), &stored));
        assert!(unchanged(&svc(", nodePort: 31000"), &stored));
        assert!(!unchanged(&svc(", nodePort: 31001"), &stored));
        assert!(!unchanged(&svc(", targetPort: 8080"), &stored));
    }
}
