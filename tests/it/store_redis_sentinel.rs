//! Redis Sentinel over real processes: a primary, a replica and two Sentinels
//! (`redis-server --sentinel`, quorum 1). Two gateways reach the primary through
//! `redis+sentinel://`, share a trip, the primary is killed, the Sentinels promote the
//! replica, and both gateways follow: the trip made before the failover is still there, and
//! changes made after it cross between them again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const ADMIN: &str = "test-admin-token-0123456789";
const MASTER: &str = "wabmaster";
const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

/// One redis-server process (data node or Sentinel), killed on drop.
struct Proc {
    child: Option<Child>,
    port: u16,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, port: u16, args: &[String]) -> Proc {
        let bin = crate::support::redis::find_redis_server()
            .expect("redis-server (apt-get install -y redis-server)");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn redis-server");
        let p = Proc {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not listen: {}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cmd(&self, args: &[&str]) -> Resp {
        crate::support::redis::RespConn::connect(self.port).cmd(args)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn data_node(dir: &Path, name: &str, port: u16, replica_of: Option<u16>) -> Proc {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        ".",
        "--dbfilename",
        &format!("{name}.rdb"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(m) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
    }
    Proc::spawn(dir, name, port, &args)
}

fn sentinel(dir: &Path, name: &str, port: u16, master: u16) -> Proc {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir .\nsentinel monitor {MASTER} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n"
        ),
    )
    .unwrap();
    Proc::spawn(
        dir,
        name,
        port,
        &[conf.display().to_string(), "--sentinel".to_string()],
    )
}

fn master_port(s: &Proc) -> Option<u16> {
    match s.cmd(&["SENTINEL", "get-master-addr-by-name", MASTER]) {
        r @ Resp::Array(_) => r.strings().get(1).and_then(|p| p.parse().ok()),
        _ => None,
    }
}

fn config(upstream: &str, redis_url: &str) -> String {
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
redis_url = "{redis_url}"
redis_prefix = "s"
redis_retry_max = "300ms"
log_level = "info,wa_breaker=debug"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"#
    )
}

async fn state(gw: &Gateway) -> String {
    let (_, c) = gw.circuit(ADMIN, WABA).await;
    c["state"].as_str().unwrap_or("none").to_string()
}

async fn wait_state(gw: &Gateway, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if state(gw).await == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "not {want} within {within:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_connected(gw: &Gateway, within: Duration) {
    let t = Instant::now();
    while metric(&gw.metrics().await, "wa_breaker_redis_connected", &[]) != Some(1.0) {
        assert!(
            t.elapsed() < within,
            "not connected within {within:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_follow_a_sentinel_failover_and_keep_sharing_trips() {
    bounded(async {
        let dir = tempfile::Builder::new().prefix("wa-breaker-sentinel-").tempdir().unwrap();
        let d = dir.path();
        let (pm, pr, s1, s2) = (free_port(), free_port(), free_port(), free_port());
        let mut primary = data_node(d, "primary", pm, None);
        let replica = data_node(d, "replica", pr, Some(pm));
        let sa = sentinel(d, "sentinel-a", s1, pm);
        let sb = sentinel(d, "sentinel-b", s2, pm);
        assert_eq!(master_port(&sa), Some(pm));

        let fake = FakeCloud::start().await;
        // The first address is no Sentinel at all: the next one is asked.
        let url = format!("redis+sentinel://127.0.0.1:{},127.0.0.1:{s1},127.0.0.1:{s2}/{MASTER}", free_port());
        let a = Gateway::start(&config(&fake.url(), &url)).await;
        let b = Gateway::start(&config(&fake.url(), &url)).await;
        wait_connected(&a, Duration::from_secs(10)).await;
        wait_connected(&b, Duration::from_secs(10)).await;

        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        wait_state(&b, "open", Duration::from_secs(2)).await;
        // Replicated before the primary goes.
        let t = Instant::now();
        while !replica.cmd(&["GET", &format!("s:circuit:{WABA}")]).render().contains("open") {
            assert!(t.elapsed() < Duration::from_secs(5), "key not replicated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The primary dies; the Sentinels promote the replica.
        primary.kill();
        let t = Instant::now();
        while master_port(&sa) != Some(pr) || master_port(&sb) != Some(pr) {
            assert!(t.elapsed() < Duration::from_secs(50), "no failover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let failover = t.elapsed();
        // Both serve all along: the open circuit keeps answering locally.
        assert_eq!(b.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        let t = Instant::now();
        wait_connected(&a, Duration::from_secs(15)).await;
        wait_connected(&b, Duration::from_secs(15)).await;
        let follow = t.elapsed();
        eprintln!("sentinel failover took {failover:?}; both gateways on the new primary {follow:?} later");
        for gw in [&a, &b] {
            assert!(gw.logs().contains("redis is back"), "{}", gw.logs());
        }

        // After the failover: a close on B reaches A, a new trip on A reaches B, all through
        // the new primary.
        fake.on_phone(PHONE, Reply::ok_send());
        let r = b.admin_post(&format!("/admin/circuits/{WABA}/close"), Some(ADMIN), None).await;
        assert_eq!(r.status(), 200);
        let took = wait_state(&a, "closed", Duration::from_secs(2)).await;
        eprintln!("close on B reached A through the new primary in {took:?}");
        fake.on_phone(PHONE, Reply::blocked_368());
        assert_eq!(a.send_str(PHONE, TEMPLATE_BODY).await.status(), 403);
        wait_state(&b, "open", Duration::from_secs(2)).await;
        let stored = replica.cmd(&["GET", &format!("s:circuit:{WABA}")]).render();
        assert!(stored.contains("\"state\":\"open\""), "{stored}");
        assert_eq!(fake.count_for_phone(PHONE), 2, "only the two tripping sends reached Meta");
    })
    .await;
}
