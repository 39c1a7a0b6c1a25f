//! The operator's command line on a running gateway's admin API: `wa-breaker circuits …`
//! and `wa-breaker accounts …`.
//!
//! The admin URL comes from `--admin-url`, else from the config's `admin_listen` (so
//! `--config FILE` is enough on the gateway's host). The token comes from `--token-file`,
//! else `WA_BREAKER_ADMIN_TOKEN`, else the config's `admin_token` — never from a plain flag,
//! which would land in shell history and `ps`. Output is a table, or the admin API's JSON
//! with `--json`. Exit codes (see [`Exit`]) let scripts tell the outcomes apart.

mod client;
mod render;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use http::{Method, StatusCode};
use serde_json::{json, Value};

pub use client::{AdminClient, Answer, ClientError};

use crate::config::{Config, Secret};
use crate::graph::GraphId;

/// Exit codes of the admin commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The circuit, phone number or mapping does not exist (404).
    NotFound = 1,
    /// The command or its input is wrong (also the gateway's 400 answers).
    Usage = 2,
    /// No token, a wrong token (401), or the admin API is disabled on the gateway.
    Unauthorized = 3,
    /// The admin API cannot be reached (connection refused, timeout, DNS).
    Unreachable = 4,
    /// The gateway refused or failed the change (409, 5xx, an unexpected answer).
    Failed = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Where the admin API is and how to authenticate (shared by every admin command).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Base URL of the gateway's admin listener, e.g. http://127.0.0.1:9090.
    /// Default: the config's admin_listen (`0.0.0.0` / `[::]` mean this host).
    #[arg(long, value_name = "URL", env = "WA_BREAKER_ADMIN_URL", global = true)]
    pub admin_url: Option<String>,

    /// File holding the admin token (one line). Without it the token comes from
    /// WA_BREAKER_ADMIN_TOKEN, then from the config's admin_token.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Print the admin API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `wa-breaker circuits …`
#[derive(clap::Args, Debug)]
pub struct CircuitsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    op: CircuitsOp,
}

/// What to do with circuits.
#[derive(clap::Subcommand, Debug)]
enum CircuitsOp {
    /// List circuits, open ones first (--json: the admin API's array, sorted by id).
    List {
        /// Only open or only closed circuits.
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// Only the circuits that guard this phone number (its own, its WABA's, its
        /// templates').
        #[arg(long, value_name = "PHONE_NUMBER_ID")]
        phone: Option<String>,
    },
    /// One circuit with its evidence and history (ID: a WABA id, phone:{id} or a
    /// template key as listed).
    Show {
        /// The circuit's id.
        id: String,
    },
    /// Open a circuit: its in-scope sends are answered locally until it is closed.
    Open {
        /// A WABA id, or phone:{phone_number_id}.
        id: String,
        /// Why (kept as evidence, shown in the history).
        #[arg(long)]
        reason: Option<String>,
        /// Close by itself after this long (e.g. 2h, 30m, 1d).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "until")]
        for_: Option<String>,
        /// Close by itself at this time (RFC 3339, e.g. 2026-12-07T06:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        until: Option<String>,
        /// Which sends it answers.
        #[arg(long, value_enum)]
        scope: Option<ScopeArg>,
        /// The Graph error code local replies carry (default 368).
        #[arg(long)]
        code: Option<i64>,
    },
    /// Close a circuit: sends go to Meta again.
    Close {
        /// A WABA id, or phone:{phone_number_id}.
        id: String,
        /// Why (kept as evidence, shown in the history).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `--state`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "snake_case")]
enum StateFilter {
    Open,
    Closed,
}

/// `--scope`, as the admin API spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "snake_case")]
enum ScopeArg {
    AllSends,
    BusinessInitiated,
    CustomerInitiated,
    UtilityTemplates,
    MarketingTemplates,
}

impl ScopeArg {
    fn as_str(self) -> &'static str {
        match self {
            ScopeArg::AllSends => "all_sends",
            ScopeArg::BusinessInitiated => "business_initiated",
            ScopeArg::CustomerInitiated => "customer_initiated",
            ScopeArg::UtilityTemplates => "utility_templates",
            ScopeArg::MarketingTemplates => "marketing_templates",
        }
    }
}

/// `wa-breaker accounts …`
#[derive(clap::Args, Debug)]
pub struct AccountsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    op: AccountsOp,
}

/// What to do with phone number → WABA mappings.
#[derive(clap::Subcommand, Debug)]
enum AccountsOp {
    /// Every known phone number with its WABA and where that came from.
    List,
    /// Map a phone number to a WABA (an operator's entry wins over [[accounts]] and
    /// anything learned).
    Set {
        /// The phone-number id.
        phone_number_id: String,
        /// The WABA id that owns it.
        waba_id: String,
    },
    /// Remove a learned or operator-set mapping.
    Delete {
        /// The phone-number id.
        phone_number_id: String,
    },
}

fn parse_duration(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write it like 2h, 30m, 1d 12h)"))
        .and_then(|d| {
            if d.is_zero() {
                Err("must be longer than zero".into())
            } else {
                Ok(s.to_string())
            }
        })
}

fn parse_time(s: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (write RFC 3339, e.g. 2026-12-07T06:00:00Z)"))
}

/// A failed command: what to print and the exit code.
struct Failure {
    exit: Exit,
    msg: String,
}

impl Failure {
    fn new(exit: Exit, msg: impl Into<String>) -> Failure {
        Failure {
            exit,
            msg: msg.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let exit = match e {
            ClientError::Tls(_) => Exit::Failed,
            _ => Exit::Unreachable,
        };
        Failure::new(exit, e.to_string())
    }
}

/// Runs `wa-breaker circuits …`; `config` is the global `--config`.
pub fn circuits(args: CircuitsArgs, config: Option<&Path>) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = connect(&args.admin, config)?;
        circuits_op(&client, args.op, json).await
    }))
}

/// Runs `wa-breaker accounts …`; `config` is the global `--config`.
pub fn accounts(args: AccountsArgs, config: Option<&Path>) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = connect(&args.admin, config)?;
        accounts_op(&client, args.op, json).await
    }))
}

fn block_on<F: std::future::Future<Output = Result<(), Failure>>>(f: F) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::Failed, format!("cannot start the runtime: {e}")))?;
    let out = rt.block_on(f);
    // Nothing left to wait for (a DNS lookup still running must not hold the exit).
    rt.shutdown_background();
    out
}

fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            eprintln!("wa-breaker: {}", f.msg);
            f.exit.into()
        }
    }
}

/// The admin URL and token, from the flags, the environment and the config.
fn connect(args: &AdminArgs, config: Option<&Path>) -> Result<AdminClient, Failure> {
    // The config is read only when it is needed: an operator's laptop may not have the
    // files a production config names.
    let need_config = args.admin_url.is_none()
        || (args.token_file.is_none() && std::env::var_os("WA_BREAKER_ADMIN_TOKEN").is_none());
    let cfg = if need_config {
        Some(Config::load(config).map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("{e} (the admin URL and token are read from the config; pass --admin-url and set WA_BREAKER_ADMIN_TOKEN to do without it)"),
            )
        })?)
    } else {
        None
    };
    let base = match (&args.admin_url, &cfg) {
        (Some(u), _) => {
            let uri: http::Uri = u.parse().map_err(|e| {
                Failure::new(Exit::Usage, format!("--admin-url {u:?} is not a URL: {e}"))
            })?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("--admin-url {u:?} must look like http://127.0.0.1:9090"),
                ));
            }
            u.clone()
        }
        (None, Some(cfg)) => format!("http://{}", reachable(cfg.admin_listen)),
        (None, None) => {
            return Err(Failure::new(
                Exit::Usage,
                "no admin URL: pass --admin-url or --config",
            ))
        }
    };
    let token = match &args.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => match std::env::var("WA_BREAKER_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(Secret::new(t.trim())),
            _ => cfg.and_then(|c| c.admin_token),
        },
    };
    AdminClient::new(&base, token).map_err(Failure::from)
}

/// An address to connect to for a listen address (`0.0.0.0` → `127.0.0.1`, `[::]` → `[::1]`).
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn read_token_file(path: &Path) -> Result<Secret, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(Exit::Usage, format!("--token-file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\n', '\r']) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--token-file {}: must hold the token on one line",
                path.display()
            ),
        ));
    }
    Ok(Secret::new(token))
}

/// Characters escaped in a path segment: all but unreserved ones and `:` (the admin API
/// matches `phone:{id}` and template keys as written).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// `id` as one path segment.
fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// Circuits per page the CLI asks for.
const PAGE: usize = 1_000;

/// Every circuit `GET /admin/circuits?{query}` lists, page by page (the API pages by
/// default): the next page starts after the last circuit's id, until a page is short.
async fn all_pages(client: &AdminClient, query: &[String]) -> Result<Value, Failure> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        q.push(format!("limit={PAGE}"));
        if let Some(a) = &after {
            q.push(format!(
                "after={}",
                form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()
            ));
        }
        let path = format!("/admin/circuits?{}", q.join("&"));
        let a = expect_ok(client, client.call(Method::GET, &path, None).await?)?;
        let Value::Array(page) = a.json() else {
            return Err(Failure::new(
                Exit::Failed,
                format!(
                    "{}: /admin/circuits did not answer a JSON array",
                    client.base()
                ),
            ));
        };
        let full = page.len() >= PAGE;
        after = page.last().map(render::circuit_id);
        all.extend(page);
        if !full || after.is_none() {
            return Ok(Value::Array(all));
        }
    }
}

async fn circuits_op(client: &AdminClient, op: CircuitsOp, json: bool) -> Result<(), Failure> {
    match op {
        CircuitsOp::List { state, phone } => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(format!(
                    "state={}",
                    match s {
                        StateFilter::Open => "open",
                        StateFilter::Closed => "closed",
                    }
                ));
            }
            if let Some(p) = &phone {
                if !GraphId::is_valid(p) {
                    return Err(Failure::new(
                        Exit::Usage,
                        format!("--phone {p:?} is not a numeric phone-number id"),
                    ));
                }
                query.push(format!("phone={p}"));
            }
            let list = all_pages(client, &query).await?;
            if json {
                print_json(&list);
            } else {
                print!("{}", render::circuit_table(&list));
            }
            Ok(())
        }
        CircuitsOp::Show { id } => {
            let path = format!("/admin/circuits/{}", segment(&id));
            let a = expect_ok(client, client.call(Method::GET, &path, None).await?)?;
            let c = a.json();
            if json {
                print_json(&c);
            } else {
                print!("{}", render::circuit_detail(&c, chrono::Utc::now()));
            }
            Ok(())
        }
        CircuitsOp::Open {
            id,
            reason,
            for_,
            until,
            scope,
            code,
        } => {
            check_circuit_id(&id)?;
            let mut body = json!({});
            if let Some(r) = reason {
                body["reason"] = r.into();
            }
            if let Some(u) = until {
                body["until"] = u.into();
            }
            if let Some(f) = &for_ {
                body["for"] = f.clone().into();
            }
            if let Some(s) = scope {
                body["scope"] = s.as_str().into();
            }
            if let Some(c) = code {
                body["code"] = c.into();
            }
            let path = format!("/admin/circuits/{}/open", segment(&id));
            let mut a = client.call(Method::POST, &path, Some(&body)).await?;
            if let Some(f) = &for_ {
                if a.status == StatusCode::BAD_REQUEST && a.error_text().contains("`for`") {
                    // A gateway older than `for`: the same end, worked out here.
                    let d = humantime::parse_duration(f)
                        .map_err(|e| Failure::new(Exit::Usage, format!("--for {f:?}: {e}")))?;
                    let until = chrono::Utc::now()
                        + chrono::Duration::from_std(d).map_err(|_| {
                            Failure::new(Exit::Usage, format!("--for {f:?} is too long"))
                        })?;
                    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    eprintln!("wa-breaker: this gateway does not know \"for\"; sending until = {until} instead");
                    if let Some(obj) = body.as_object_mut() {
                        obj.remove("for");
                        obj.insert("until".into(), until.into());
                    }
                    a = client.call(Method::POST, &path, Some(&body)).await?;
                }
            }
            changed(client, a, json)
        }
        CircuitsOp::Close { id, reason } => {
            check_circuit_id(&id)?;
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let path = format!("/admin/circuits/{}/close", segment(&id));
            let a = client.call(Method::POST, &path, Some(&body)).await?;
            changed(client, a, json)
        }
    }
}

async fn accounts_op(client: &AdminClient, op: AccountsOp, json: bool) -> Result<(), Failure> {
    match op {
        AccountsOp::List => {
            let a = expect_ok(
                client,
                client.call(Method::GET, "/admin/accounts", None).await?,
            )?;
            let list = a.json();
            if json {
                print_json(&list);
            } else {
                print!("{}", render::account_table(&list));
            }
            Ok(())
        }
        AccountsOp::Set {
            phone_number_id,
            waba_id,
        } => {
            for (what, id) in [("phone_number_id", &phone_number_id), ("waba_id", &waba_id)] {
                if !GraphId::is_valid(id) {
                    return Err(Failure::new(
                        Exit::Usage,
                        format!("{what} {id:?} is not a numeric id"),
                    ));
                }
            }
            let path = format!("/admin/accounts/phones/{phone_number_id}");
            let a = client
                .call(Method::PUT, &path, Some(&json!({ "waba_id": waba_id })))
                .await?;
            mapping_changed(client, a, json)
        }
        AccountsOp::Delete { phone_number_id } => {
            if !GraphId::is_valid(&phone_number_id) {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("phone_number_id {phone_number_id:?} is not a numeric id"),
                ));
            }
            let path = format!("/admin/accounts/phones/{phone_number_id}");
            let a = client.call(Method::DELETE, &path, None).await?;
            mapping_changed(client, a, json)
        }
    }
}

/// A WABA id or `phone:{id}` (what open and close take), checked before asking.
fn check_circuit_id(id: &str) -> Result<(), Failure> {
    if GraphId::is_valid(id.strip_prefix("phone:").unwrap_or(id)) {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Usage,
            format!("{id:?} is not a WABA id or phone:{{phone_number_id}}"),
        ))
    }
}

/// A 2xx answer, or the failure its status means.
fn expect_ok(client: &AdminClient, a: Answer) -> Result<Answer, Failure> {
    if a.status.is_success() {
        return Ok(a);
    }
    let text = a.error_text();
    let exit = match a.status {
        StatusCode::UNAUTHORIZED => {
            return Err(Failure::new(
                Exit::Unauthorized,
                format!(
                    "{}: {text} (set WA_BREAKER_ADMIN_TOKEN or --token-file to the gateway's admin_token)",
                    client.base()
                ),
            ))
        }
        StatusCode::NOT_FOUND if text.contains("admin API is disabled") => Exit::Unauthorized,
        StatusCode::NOT_FOUND => Exit::NotFound,
        s if s.is_client_error() && s != StatusCode::CONFLICT => Exit::Usage,
        _ => Exit::Failed,
    };
    Err(Failure::new(
        exit,
        format!("{} answered {}: {text}", client.base(), a.status),
    ))
}

/// The answer to an open or close: the circuit after it.
fn changed(client: &AdminClient, a: Answer, json: bool) -> Result<(), Failure> {
    let a = expect_ok(client, a)?;
    let c = a.json();
    warn_not_durable(&c);
    if json {
        print_json(&c);
    } else {
        println!("{}", render::circuit_line(&c));
    }
    Ok(())
}

/// The answer to a mapping change.
fn mapping_changed(client: &AdminClient, a: Answer, json: bool) -> Result<(), Failure> {
    let a = expect_ok(client, a)?;
    let m = a.json();
    warn_not_durable(&m);
    if json {
        print_json(&m);
    } else {
        println!("{}", render::account_line(&m));
    }
    Ok(())
}

/// 202: applied in memory, not yet stored — done, but say so.
fn warn_not_durable(v: &Value) {
    if v["durable"] == false {
        eprintln!(
            "wa-breaker: warning: {}",
            v["warning"]
                .as_str()
                .unwrap_or("applied but not yet durable")
        );
    }
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_become_reachable_ones() {
        let r = |s: &str| reachable(s.parse().unwrap()).to_string();
        assert_eq!(r("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(r("[::]:9090"), "[::1]:9090");
        assert_eq!(r("10.0.0.5:9090"), "10.0.0.5:9090");
    }

    #[test]
    fn durations_and_times_are_checked_before_asking() {
        assert!(parse_duration("2h").is_ok());
        assert!(parse_duration("1d 12h").is_ok());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("two hours").is_err());
        assert!(parse_time("2026-12-07T06:00:00Z").is_ok());
        assert!(parse_time("tomorrow").is_err());
        assert!(check_circuit_id("102290129340398").is_ok());
        assert!(check_circuit_id("phone:106540352242922").is_ok());
        assert!(check_circuit_id("phone:").is_err());
        assert!(check_circuit_id("10229x").is_err());
        assert_eq!(segment("template:1:a_b:en-US"), "template:1:a_b:en-US");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
