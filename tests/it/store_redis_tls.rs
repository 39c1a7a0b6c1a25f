//! Production Redis over real processes: a `redis-server` with TLS only (`--port 0
//! --tls-port`), certificates made at test time with the openssl CLI (a CA, a server
//! certificate for `localhost`/127.0.0.1, a client certificate), mutual TLS, and ACL users.
//! Two gateways share a trip over it; a wrong CA, a server name that does not match, a
//! wrong password and an ACL user missing a command each give one clear log line while the
//! gateway keeps serving from memory and its embedded store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const ADMIN: &str = "test-admin-token-0123456789";
const PREFIX: &str = "tls";
const GW_PASS: &str = "gw-acl-password-0123";
const LIMITED_PASS: &str = "limited-acl-password-0123";
const LIMIT: Duration = Duration::from_secs(120);

/// Exactly the commands the gateway sends (README "Production Redis"), on its own keys and
/// channel. The CAS script's GET / SET / PUBLISH (and the health poll scripts' INCR /
/// PEXPIRE / DEL) are checked against the same rules.
const GATEWAY_COMMANDS: &[&str] = &[
    "+ping",
    "+scan",
    "+mget",
    "+script|load",
    "+evalsha",
    "+subscribe",
    "+get",
    "+set",
    "+publish",
    "+select",
    // The health poll lease and budget scripts (with GET and SET).
    "+incr",
    "+pexpire",
    "+del",
];

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir` (`{name}.crt`, `{name}.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-subj",
            &format!("/CN=wa-breaker test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `{name}.crt`/`{name}.key` signed by `ca`, with `ext` (SAN, EKU).
fn make_leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// A TLS-only redis-server with ACL users `gw` (the gateway's commands) and `limited`
/// (the same without EVALSHA); the default user is off. Killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let bin = crate::support::redis::find_redis_server()
            .expect("redis-server (apt-get install -y redis-server)");
        let dir = tempfile::Builder::new()
            .prefix("wa-breaker-tls-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        make_leaf(
            d,
            "ca",
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        make_leaf(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
        let acl = |user: &str, pass: &str, skip: &str| {
            let mut rule = vec![
                user.to_string(),
                "on".into(),
                format!(">{pass}"),
                "resetchannels".into(),
                format!("~{PREFIX}:*"),
                format!("&{PREFIX}:*"),
                "-@all".into(),
            ];
            rule.extend(
                GATEWAY_COMMANDS
                    .iter()
                    .filter(|c| **c != skip)
                    .map(|c| c.to_string()),
            );
            rule
        };
        for attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(d.join("redis.log")).unwrap();
            let mut cmd = Command::new(&bin);
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "127.0.0.2"])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args([
                    "--tls-ca-cert-file",
                    "ca.crt",
                    "--tls-auth-clients",
                    "optional",
                ])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(d)
                .args(["--user", "default", "off"])
                .arg("--user")
                .args(acl("gw", GW_PASS, ""))
                .arg("--user")
                .args(acl("limited", LIMITED_PASS, "+evalsha"))
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log));
            let mut child = cmd.spawn().expect("spawn redis-server");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsRedis { child, port, dir };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(d.join("redis.log")).unwrap_or_default();
                    assert!(
                        attempt < 4 && log.contains("in use"),
                        "redis-server exited ({status}):\n{log}"
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "redis-server did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(upstream: &str, redis_url: &str, tls: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
redis_url = "{redis_url}"
redis_prefix = "{PREFIX}"
redis_retry_max = "300ms"
log_level = "info,wa_breaker=debug"
{tls}

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

fn tls_files(r: &TlsRedis, ca: &str, client_cert: bool) -> String {
    let mut s = format!(
        "redis_ca_file = \"{}\"\n",
        r.file(&format!("{ca}.crt")).display()
    );
    if client_cert {
        s.push_str(&format!(
            "redis_client_cert = \"{}\"\nredis_client_key = \"{}\"\n",
            r.file("client.crt").display(),
            r.file("client.key").display()
        ));
    }
    s
}

async fn connected(gw: &Gateway) -> f64 {
    metric(&gw.metrics().await, "wa_breaker_redis_connected", &[]).unwrap_or(-1.0)
}

async fn wait_open(gw: &Gateway, within: Duration) {
    let t = Instant::now();
    loop {
        let (_, c) = gw.circuit(ADMIN, WABA).await;
        if c["state"] == "open" {
            return;
        }
        assert!(t.elapsed() < within, "not open within {within:?}: {c}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_trip_over_mutual_tls_with_an_acl_user() {
    bounded(async {
        let redis = TlsRedis::start();
        let fake = FakeCloud::start().await;
        let url = format!("rediss://gw:{GW_PASS}@localhost:{}/0", redis.port);
        let cfg = config(&fake.url(), &url, &tls_files(&redis, "ca", true));
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        for gw in [&a, &b] {
            let t = Instant::now();
            while connected(gw).await != 1.0 {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "not connected over TLS:\n{}",
                    gw.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        let t = Instant::now();
        wait_open(&b, Duration::from_secs(2)).await;
        eprintln!("trip on A reached B over TLS in {:?}", t.elapsed());
        let r = b.send_str(PHONE, TEMPLATE_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        assert_eq!(fake.count_for_phone(PHONE), 1, "B answered locally");
        for gw in [&a, &b] {
            let logs = gw.logs();
            assert!(logs.contains("redis connected"), "{logs}");
            assert!(!logs.contains(GW_PASS), "password in the log");
            assert!(!logs.contains("redis is away"), "{logs}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_or_credentials_give_one_clear_line_and_the_gateway_keeps_serving() {
    bounded(async {
        let redis = TlsRedis::start();
        let fake = FakeCloud::start().await;
        let p = redis.port;
        let cases = [
            (
                "wrong CA",
                format!("rediss://gw:{GW_PASS}@localhost:{p}"),
                tls_files(&redis, "other-ca", false),
                "invalid peer certificate",
            ),
            (
                "server name not in the certificate",
                format!("rediss://gw:{GW_PASS}@127.0.0.2:{p}"),
                tls_files(&redis, "ca", false),
                "invalid peer certificate",
            ),
            (
                "wrong password",
                format!("rediss://gw:not-the-password@localhost:{p}"),
                tls_files(&redis, "ca", false),
                "Password authentication failed",
            ),
            (
                "ACL without EVALSHA",
                format!("rediss://limited:{LIMITED_PASS}@localhost:{p}"),
                tls_files(&redis, "ca", false),
                "no permissions to run the 'evalsha' command",
            ),
        ];
        for (what, url, tls, needle) in cases {
            let gw = Gateway::start(&config(&fake.url(), &url, &tls)).await;
            // It serves: an operator opens, sends are answered locally, the state is on disk.
            let r = gw
                .admin_post(&format!("/admin/circuits/{WABA}/open"), Some(ADMIN), None)
                .await;
            assert_eq!(r.status(), 200, "{what}");
            let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
            assert_eq!(r.status(), 403, "{what}");
            assert!(
                gw.wait_for_log(needle, Duration::from_secs(8)).await,
                "{what}: no line with {needle:?}:\n{}",
                gw.logs()
            );
            // Retries go on quietly: one warning for the outage.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let logs = gw.logs();
            let away: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("redis is away"))
                .collect();
            assert_eq!(away.len(), 1, "{what}: {away:#?}");
            assert!(
                away[0].contains(needle),
                "{what}: the line names the cause: {}",
                away[0]
            );
            eprintln!("{what}: {}", away[0]);
            for secret in [GW_PASS, LIMITED_PASS, "not-the-password"] {
                assert!(!logs.contains(secret), "{what}: password in the log");
            }
            assert_eq!(connected(&gw).await, 0.0, "{what}");
            assert_eq!(
                gw.send_str(PHONE, TEMPLATE_BODY).await.status(),
                403,
                "{what}"
            );
        }
    })
    .await;
}

#[test]
fn check_config_refuses_bad_redis_tls_settings_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = dir.path().join("junk.pem").display().to_string();
    for (toml, key) in [
        (
            format!(
                "redis_url = \"rediss://u:SECRETPW@localhost:6380\"\nredis_ca_file = \"{junk}\""
            ),
            "redis_ca_file",
        ),
        (
            "redis_url = \"redis://u:SECRETPW@localhost:6379\"\nredis_ca_file = \"/etc/hostname\""
                .to_string(),
            "redis_ca_file",
        ),
        (
            "redis_url = \"rediss://u:SECRETPW@localhost:6380\"\nredis_client_cert = \"/x.pem\""
                .to_string(),
            "redis_client_cert",
        ),
        (
            "redis_url = \"rediss://u:SECRETPW@\"".to_string(),
            "redis_url",
        ),
        (
            "redis_url = \"http://u:SECRETPW@localhost\"".to_string(),
            "redis_url",
        ),
    ] {
        let tc = write_config(&toml);
        let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} accepted");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
        assert!(!stderr.contains("SECRETPW"), "password shown: {stderr}");
    }
    let tc = write_config("redis_url = \"rediss://gw:SECRETPW@localhost:6380/2\"\n");
    let out = Gateway::run_cli(&["check-config", "--config", &tc.path_str()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SECRETPW"));
}
