//! The gateway's two request engines, and a macro that runs a test once on each.
//!
//! `fast_path = true` (the default) serves plain HTTP/1.1 requests with the byte relay
//! (`src/relay`); `fast_path = false` sends every request through the hyper + tower stack
//! (`src/proxy`). Both must behave the same, so behaviour tests take an [`Engine`] and put
//! its [`Engine::config_line`] into the gateway's config:
//!
//! ```ignore
//! async fn trips_on_368(engine: Engine) {
//!     let gw = start(&format!("{}\n…", engine.config_line())).await;
//!     …
//! }
//!
//! both_engines!(trips_on_368, another_test);
//! ```
//!
//! `both_engines!` (invoke it once per test file, at the crate root, listing every
//! per-engine test) generates `mod relay { #[tokio::test] async fn trips_on_368() … }` and
//! the same `mod hyper`, so `cargo test` lists `relay::trips_on_368` and
//! `hyper::trips_on_368`.

/// Which request engine a gateway under test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `fast_path = true`: the byte relay for plain HTTP/1.1 (hyper for the rest).
    Relay,
    /// `fast_path = false`: hyper + tower for every request.
    Hyper,
}

impl Engine {
    /// Both engines, relay first.
    pub const ALL: [Engine; 2] = [Engine::Relay, Engine::Hyper];

    /// The top-level config line that selects this engine (put it before any `[table]`).
    pub fn config_line(self) -> &'static str {
        match self {
            Engine::Relay => "fast_path = true",
            Engine::Hyper => "fast_path = false",
        }
    }

    pub fn is_relay(self) -> bool {
        self == Engine::Relay
    }

    /// `"relay"` or `"hyper"` (for assertion messages).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Relay => "relay",
            Engine::Hyper => "hyper",
        }
    }
}

/// Runs each listed `async fn name(engine: Engine)` once per engine, as
/// `relay::name` and `hyper::name` (`#[tokio::test]`, current-thread runtime).
/// Invoke once per test file, at the crate root.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {
        /// The tests of this file on the byte relay (`fast_path = true`).
        mod relay {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Engine::Relay).await
                }
            )+
        }
        /// The tests of this file on the hyper + tower stack (`fast_path = false`).
        mod hyper {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Engine::Hyper).await
                }
            )+
        }
    };
}
