//! Integration-test support for wa-breaker: a fake Cloud API, a redis-server launcher,
//! a launcher for the built binary, signed-webhook helpers, a raw HTTP/1.1 upstream and
//! client for framing tests, `Engine` + `both_engines!` to run a test on both engines, and a
//! launcher for `wa-breaker simulate` (the Cloud API simulator users rehearse with).
//!
//! The one test binary (`tests/it/main.rs`) includes it once (a few items serve only some
//! modules).
#![allow(dead_code, unused_imports)]

#[macro_use]
pub mod engine;
pub mod fake_cloud;
pub mod gateway;
pub mod h2_frame;
pub mod h2_upstream;
pub mod raw;
pub mod redis;
pub mod simulator;
pub mod webhook;

pub use self::engine::Engine;
pub use self::fake_cloud::{
    graph_error_body, health_json, health_json_phone, FakeCloud, HealthPoll, Recorded, Reply,
    WebhookSink, BLOCKED_368_BODY, FBTRACE_ID, OK_SEND_BODY,
};
pub use self::gateway::{
    client, metric, metric_sum, run_cli_in, samples, send, template_body, text_body, write_config,
    Gateway, GatewayBuilder, Sample, TempConfig, TEMPLATE_BODY, TEST_TOKEN, TEST_VERSION,
    TEXT_BODY,
};
pub use self::raw::{
    closed, fixture, raw, read_answer, read_to_close, send_req, tls_acceptor, tls_acceptor_alpn,
    Answer, RawReply, RawUpstream, Writes, BYTE_PAUSE, OK_RAW, SPLIT_PAUSE,
};
pub use self::redis::{free_port, redis_available, RedisServer, RedisSubscriber, Resp};
pub use self::simulator::Simulator;
pub use self::webhook::{
    account_update, change, disabled, entry, envelope, event, now_unix, post_signed,
    post_with_signature, restriction, sign, verify_get, violation,
};
