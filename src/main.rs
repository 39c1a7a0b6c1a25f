//! The `wa-breaker` binary: flags, config, logging, runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wa_breaker::config::{Config, LogFormat};
use wa_breaker::{cli, simulate, StoreError};

/// wa-breaker: a WhatsApp Cloud API send gateway that stops sending for a WhatsApp
/// Business Account the moment Meta blocks it (HTTP 403 / error 368) and resumes when
/// Meta says it may send again.
///
/// Every setting can also be given as an environment variable WA_BREAKER_<KEY>
/// (nested keys with a double underscore, e.g. WA_BREAKER_WEBHOOK__APP_SECRET).
#[derive(Parser, Debug)]
#[command(name = "wa-breaker", version, about, long_about)]
struct Cli {
    /// TOML config file. Without it, the gateway runs on its defaults
    /// (listen 0.0.0.0:8080, admin 127.0.0.1:9090, upstream https://graph.facebook.com).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "WA_BREAKER_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,

    /// When the state store under state_dir is corrupt or unreadable, rename it to
    /// `<name>.corrupt-<timestamp>` and start with empty state (logged loudly).
    /// Without it, such a store stops the start-up with an error naming the file.
    #[arg(long)]
    move_aside_corrupt_state: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// As the top-level --move-aside-corrupt-state.
        #[arg(long)]
        move_aside_corrupt_state: bool,
    },
    /// Validate the config and the state store, and print the effective settings,
    /// secrets masked. Exits non-zero when the gateway would not start.
    CheckConfig,
    /// List, show, open and close circuits on a running gateway (its admin API).
    ///
    /// Exit codes: 0 ok, 1 not found, 2 usage or bad input, 3 unauthorized (no or wrong
    /// token, admin API disabled), 4 admin API unreachable, 5 the gateway refused or failed.
    Circuits(cli::CircuitsArgs),
    /// List, set and delete phone number → WABA mappings on a running gateway.
    ///
    /// Exit codes as for `circuits`.
    Accounts(cli::AccountsArgs),
    /// Run a WhatsApp Cloud API simulator to rehearse blocks against (never Meta):
    /// sends, Health Status, throughput, Meta's error envelopes on demand, signed
    /// webhooks, and a control API under /_sim/.
    Simulate(simulate::Options),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Some(Command::Circuits(c)) => return cli::circuits(c, args.config.as_deref()),
        Some(Command::Accounts(a)) => return cli::accounts(a, args.config.as_deref()),
        Some(Command::Simulate(o)) => return simulate::main(o, args.config.as_deref()),
        _ => {}
    }
    // On this thread: `[[accounts]]` is parsed a few tables at a time (`config::file`), so
    // even 10 000 accounts leave only small temporaries. (A short-lived loading thread used
    // to keep figment's tens of MB of value trees in an arena of its own; with the parse
    // this small, that arena's top, which `malloc_trim` leaves alone, cost more than it
    // saved: 6.0 MB of anonymous memory at idle with it, 5.4 MB without, issue 24.)
    let mut cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wa-breaker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = args.command {
        return check_config(&cfg);
    }
    cfg.move_aside_corrupt_state = args.move_aside_corrupt_state
        || matches!(
            args.command,
            Some(Command::Run {
                move_aside_corrupt_state: true
            })
        );
    init_logging(&cfg);
    release_freed_memory();
    // The control runtime (admin, store, signals); proxy workers run their own (see lib.rs).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wa-breaker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(wa_breaker::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = wa_breaker::error_chain(&e);
            tracing::error!(error = %e, "wa-breaker stopped");
            eprintln!("wa-breaker: {e}");
            ExitCode::FAILURE
        }
    };
    // State is flushed by now. Dropping the runtime would join its blocking threads, and
    // one may still be inside a DNS lookup (getaddrinfo: health polls, discovery,
    // notifications, the webhook relay) or another blocking call for seconds after
    // `stopped` was logged: exit without waiting for them.
    rt.shutdown_background();
    code
}

/// `check-config`: the config was loaded and validated; the state store is opened as the
/// start would open it, so a store that would stop the start fails here too.
fn check_config(cfg: &Config) -> ExitCode {
    print!("{}", cfg.to_masked_toml());
    let phones: usize = cfg.accounts.iter().map(|a| a.phone_number_ids.len()).sum();
    let learned = match wa_breaker::count_learned(&cfg.state_dir) {
        Ok(Some(n)) => format!("{n} learned or operator-set in {}", cfg.state_dir.display()),
        Ok(None) => "none learned yet (no state store)".to_string(),
        // A running gateway holds its store: normal when checking a live config.
        Err(e @ StoreError::InUse { .. }) => {
            format!("learned: unknown ({})", wa_breaker::error_chain(&e))
        }
        Err(e) => {
            eprintln!(
                "wa-breaker: the config is valid, but the gateway would not start: {}",
                wa_breaker::error_chain(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "wa-breaker: config OK: {} WABAs with {phones} phone numbers configured; {learned}",
        cfg.accounts.len()
    );
    if let Some(w) = cfg.protection_warning() {
        eprintln!("wa-breaker: warning: {w}");
    }
    ExitCode::SUCCESS
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log file or a journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Parsing a large config (10 000 accounts) leaves freed heap that glibc keeps; hand it back
/// to the OS once, before serving.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
