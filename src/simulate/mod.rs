//! `wa-breaker simulate`: a WhatsApp Cloud API simulator to rehearse blocks against,
//! grown from the project's fake Cloud API. Point a gateway's `upstream` at it.
//!
//! The Graph side answers as Meta does: sends (`POST /{version}/{phone-number-id}/messages`)
//! with a `wamid`, or — when a WABA is blocked, a template paused or disabled, or an error
//! was queued — with Meta's error envelope; Health Status reads
//! (`GET /{node}?fields=health_status`: a phone number names its parent WABA) and the
//! throughput level (`?fields=throughput`). The control API under `/_sim/` changes that
//! world, emits signed webhooks and shows the request log (see `control`). Not for
//! production: it keeps everything in memory and has no authentication; it listens on
//! loopback unless told otherwise.

mod control;
pub mod meta;
mod webhook;
pub mod world;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::common::Body;
use crate::config::{Config, Secret};
use crate::upstream::HttpClient;
use world::{Block, GraphRequest, World};

/// Path prefix of the control API.
pub const CONTROL_PREFIX: &str = "/_sim";
/// Listen address without `--listen` or a usable `--config` upstream.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9999";
/// Largest request body read.
const MAX_BODY: usize = 1024 * 1024;

/// `wa-breaker simulate` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Address to listen on. Default: the gateway config's upstream when it is
    /// http://IP:PORT (so `--config FILE` starts the upstream that config points at),
    /// else 127.0.0.1:9999.
    #[arg(long, value_name = "ADDR", env = "WA_BREAKER_SIM_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// A WABA and its phone numbers, WABA=PHONE[,PHONE…] (repeatable). With --config,
    /// the config's `[[accounts]]` are simulated too. Health Status of a phone number names
    /// its WABA; a blocked WABA answers its phone numbers' sends.
    #[arg(long = "account", value_name = "WABA=PHONES", value_parser = parse_account)]
    pub accounts: Vec<(String, Vec<String>)>,

    /// Start with this WABA blocked: its sends are answered 403 with Graph error 368
    /// (repeatable).
    #[arg(long = "block", value_name = "WABA", value_parser = parse_id)]
    pub blocks: Vec<String>,

    /// Start with this phone number blocked, whatever its WABA (403/368; repeatable): a
    /// number the gateway cannot map to a WABA trips its own circuit.
    #[arg(long = "block-phone", value_name = "PHONE", value_parser = parse_id)]
    pub block_phones: Vec<String>,

    /// Where emitted webhooks go unless a control request names a "url". Default with
    /// --config: http://{listen}{webhook.path} of that gateway.
    #[arg(long, value_name = "URL", env = "WA_BREAKER_SIM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// App secret that signs emitted webhooks (X-Hub-Signature-256) unless a control
    /// request names an "app_secret". Default with --config: its first webhook.app_secret.
    /// A rehearsal secret: use WA_BREAKER_SIM_APP_SECRET to keep it out of `ps`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "WA_BREAKER_SIM_APP_SECRET",
        hide_env_values = true
    )]
    pub app_secret: Option<String>,

    /// Print no line per request.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_id(s: &str) -> Result<String, String> {
    if world::is_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a numeric id"))
    }
}

fn parse_account(s: &str) -> Result<(String, Vec<String>), String> {
    let (waba, phones) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write WABA=PHONE[,PHONE…]"))?;
    let waba = parse_id(waba.trim())?;
    let phones = phones
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_id)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((waba, phones))
}

/// The running simulator's shared parts.
pub struct Sim {
    world: Mutex<World>,
    client: HttpClient,
    webhook_url: Option<String>,
    app_secret: Option<Secret>,
    quiet: bool,
}

impl Sim {
    /// The world, locked (a panicked holder does not poison it for the others).
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn say(&self, line: &str) {
        if !self.quiet {
            println!("simulate: {line}");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({"error": "body too large or broken"}),
                )
            }
        };
        let path = parts.uri.path();
        if let Some(rest) = path.strip_prefix(CONTROL_PREFIX) {
            if rest.is_empty() || rest.starts_with('/') {
                let (status, v) =
                    control::handle(self, &parts.method, rest, parts.uri.query(), &bytes).await;
                return json(status, &v);
            }
        }
        let (status, v) = self.world().graph(&GraphRequest {
            method: parts.method.as_str(),
            path,
            query: parts.uri.query(),
            body: &bytes,
            authorization: parts.headers.contains_key(header::AUTHORIZATION),
        });
        let code = v["error"]["code"]
            .as_i64()
            .map(|c| format!(" (#{c})"))
            .unwrap_or_default();
        self.say(&format!(
            "{} {}{} → {status}{code}",
            parts.method,
            path,
            parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        ));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json(status, &v)
    }
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// The simulator's hyper service.
#[derive(Clone)]
struct SimService(Arc<Sim>);

impl hyper::service::Service<Request<Incoming>> for SimService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let sim = self.0.clone();
        Box::pin(async move { Ok(sim.handle(req).await) })
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// `--config` could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's answer.
        #[source]
        source: std::io::Error,
    },
    /// The TLS trust store for webhook deliveries could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Runs `wa-breaker simulate` until SIGTERM/SIGINT.
pub fn main(opts: Options, config: Option<&Path>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wa-breaker simulate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(async {
        let (sim, addr) = prepare(opts, config)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        print_banner(&sim, bound);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(crate::server::serve(
            "simulate",
            listener,
            SimService(sim),
            // The defaults of the gateway's main listener.
            crate::server::AdminLimits {
                header: Duration::from_secs(60),
                idle: Duration::from_secs(60),
                max_connections: 1024,
            },
            stop_rx,
            Duration::from_secs(1),
        ));
        crate::server::shutdown_signal().await;
        let _ = stop_tx.send(true);
        let _ = serving.await;
        Ok::<(), SimError>(())
    });
    rt.shutdown_background();
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wa-breaker simulate: {}", crate::common::error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The simulator and its address, from the options and the gateway config.
fn prepare(opts: Options, config: Option<&Path>) -> Result<(Arc<Sim>, SocketAddr), SimError> {
    let cfg = match config {
        Some(path) => Some(Config::load(Some(path))?),
        None => None,
    };
    let mut world = World::default();
    if let Some(cfg) = &cfg {
        for a in &cfg.accounts {
            world.add_account(&a.waba_id, &a.phone_number_ids);
        }
    }
    for (waba, phones) in &opts.accounts {
        world.add_account(waba, phones);
    }
    for waba in &opts.blocks {
        world.block(waba, Block::policy());
    }
    for phone in &opts.block_phones {
        world.block_phone(phone, Block::policy());
    }
    let addr = opts
        .listen
        .or_else(|| cfg.as_ref().and_then(upstream_addr))
        .unwrap_or_else(|| {
            DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9999)))
        });
    let webhook_url = opts.webhook_url.or_else(|| {
        cfg.as_ref().map(|c| {
            format!(
                "http://{}{}",
                crate::cli::reachable(c.listen),
                c.webhook.path
            )
        })
    });
    let app_secret = opts.app_secret.map(Secret::new).or_else(|| {
        cfg.as_ref()
            .and_then(|c| c.webhook.app_secret.first().cloned())
    });
    let trust = crate::tls::client_config(None)?;
    let sim = Arc::new(Sim {
        world: Mutex::new(world),
        client: crate::upstream::http_client(&trust, Duration::from_secs(5)),
        webhook_url,
        app_secret,
        quiet: opts.quiet,
    });
    Ok((sim, addr))
}

/// The address of an `http://IP:PORT` upstream (the simulator stands in for it).
fn upstream_addr(cfg: &Config) -> Option<SocketAddr> {
    let uri: http::Uri = cfg.upstream.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

fn print_banner(sim: &Sim, addr: SocketAddr) {
    let world = sim.world();
    let state = world.state();
    let accounts: Vec<String> = state["accounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let phones: Vec<&str> = x["phone_number_ids"]
                        .as_array()
                        .map(|p| p.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    format!(
                        "{}={}",
                        x["waba_id"].as_str().unwrap_or_default(),
                        phones.join(",")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let blocked: Vec<String> = ["blocks", "phone_blocks"]
        .iter()
        .flat_map(|k| state[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|x| {
            x["waba_id"]
                .as_str()
                .or(x["phone_number_id"].as_str())
                .map(str::to_string)
        })
        .collect();
    println!(
        "wa-breaker simulate: listening on http://{addr} (Graph paths; control API under {CONTROL_PREFIX}/); accounts: {}; blocked: {}; webhooks to: {}{}",
        if accounts.is_empty() { "none".into() } else { accounts.join(" ") },
        if blocked.is_empty() { "none".into() } else { blocked.join(",") },
        sim.webhook_url.as_deref().unwrap_or("(none: pass \"url\" per request)"),
        if sim.app_secret.is_some() { ", signed" } else { ", unsigned until an app_secret is given" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_parse_from_the_command_line() {
        assert_eq!(
            parse_account("102290129340398=106540352242922, 106540352242923").unwrap(),
            (
                "102290129340398".to_string(),
                vec!["106540352242922".to_string(), "106540352242923".to_string()]
            )
        );
        assert!(parse_account("102290129340398").is_err());
        assert!(parse_account("abc=1").is_err());
        assert!(parse_account("1=2,x").is_err());
    }

    #[test]
    fn the_upstream_of_a_config_is_where_the_simulator_listens() {
        let mut cfg = Config {
            upstream: "http://127.0.0.1:9999".into(),
            ..Config::default()
        };
        assert_eq!(upstream_addr(&cfg), Some("127.0.0.1:9999".parse().unwrap()));
        cfg.upstream = "https://graph.facebook.com".into();
        assert_eq!(upstream_addr(&cfg), None);
        cfg.upstream = "http://localhost:9999".into();
        assert_eq!(upstream_addr(&cfg), None);
    }
}
