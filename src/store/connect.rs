//! How the replica reaches Redis: `redis://` and `unix://` through redis-rs's own
//! connection manager; `rediss://` over a TLS stream this module opens with the gateway's
//! rustls config (Mozilla roots + `redis_ca_file`, server name checked, optional client
//! certificate), handed to redis-rs for the protocol (AUTH with the ACL user, SELECT);
//! `redis+sentinel://` / `rediss+sentinel://` ask the Sentinels for the primary on every
//! connect, so a session that ends after a failover reconnects to the new primary.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub,
};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, RedisConnectionInfo, RedisFuture};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::common::error_chain;

/// Where Redis is and how to speak to it.
pub enum Endpoint {
    /// `redis://`, `unix://`.
    Plain(Client),
    /// `redis+sentinel://` / `rediss+sentinel://`.
    Sentinel(Sentinels),
    /// `rediss://`.
    Tls {
        host: String,
        port: u16,
        name: ServerName<'static>,
        connector: TlsConnector,
        /// Username, password, db: from the URL.
        info: RedisConnectionInfo,
    },
}

impl Endpoint {
    /// Parses `url`; `tls` is required for `rediss://`. Errors never quote the URL.
    pub fn new(url: &str, tls: Option<Arc<ClientConfig>>) -> Result<Endpoint, String> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return Sentinels::parse(rest, None).map(Endpoint::Sentinel);
        }
        if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            let tls = tls.ok_or("rediss+sentinel:// needs a TLS configuration")?;
            return Sentinels::parse(rest, Some(TlsConnector::from(tls))).map(Endpoint::Sentinel);
        }
        let Some(rest) = url.strip_prefix("rediss://") else {
            return Client::open(url)
                .map(Endpoint::Plain)
                .map_err(|e| e.to_string());
        };
        let tls = tls.ok_or("rediss:// needs a TLS configuration")?;
        // redis-rs parses the rest (user, password, db); TLS is ours, not its.
        let client = Client::open(format!("redis://{rest}")).map_err(|e| e.to_string())?;
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err("rediss:// needs host:port".into());
        };
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = server_name(&bare)?;
        Ok(Endpoint::Tls {
            host: bare,
            port,
            name,
            connector: TlsConnector::from(tls),
            info: info.redis_settings().clone(),
        })
    }

    /// True when the primary is found through Sentinel (and may move).
    pub fn follows_failover(&self) -> bool {
        matches!(self, Endpoint::Sentinel(_))
    }

    /// A session's two connections: commands, and the subscription.
    pub async fn connect(&self, timeout: Duration) -> Result<(Con, PubSub), String> {
        if let Endpoint::Sentinel(s) = self {
            return s.connect(timeout).await;
        }
        let con = self.command(timeout).await?;
        let pubsub = self.pubsub(timeout).await?;
        Ok((con, pubsub))
    }

    /// A command connection alone, without a subscription (the health poll leases: scripts
    /// only). Behind Sentinel, to the primary the Sentinels name, checked to be one.
    pub async fn commands(&self, timeout: Duration) -> Result<Con, String> {
        match self {
            Endpoint::Sentinel(s) => s.command(timeout).await.map(|(con, _, _)| con),
            _ => self.command(timeout).await,
        }
    }

    /// The command connection.
    async fn command(&self, timeout: Duration) -> Result<Con, String> {
        match self {
            Endpoint::Sentinel(_) => Err("not a fixed endpoint".into()),
            Endpoint::Plain(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                client
                    .get_connection_manager_with_config(cfg)
                    .await
                    .map(Con::Managed)
                    .map_err(|e| format!("connect: {e}"))
            }
            Endpoint::Tls { info, .. } => {
                let stream = self.tls_stream(timeout).await?;
                let cfg = AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
                let setup = MultiplexedConnection::new_with_config(info, stream, cfg);
                direct(setup, timeout).await
            }
        }
    }

    /// The subscription connection.
    async fn pubsub(&self, timeout: Duration) -> Result<PubSub, String> {
        let r = match self {
            Endpoint::Sentinel(_) => return Err("not a fixed endpoint".into()),
            Endpoint::Plain(client) => {
                tokio::time::timeout(timeout, client.get_async_pubsub()).await
            }
            Endpoint::Tls { info, .. } => {
                let stream = self.tls_stream(timeout).await?;
                tokio::time::timeout(timeout, PubSub::new(info, stream)).await
            }
        };
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(format!("connect (pub/sub): {e}")),
            Err(_) => Err("connect (pub/sub): timed out".into()),
        }
    }

    async fn tls_stream(
        &self,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let Endpoint::Tls {
            host,
            port,
            name,
            connector,
            ..
        } = self
        else {
            return Err("not a TLS endpoint".into());
        };
        tls_stream(connector, host, *port, name.clone(), timeout).await
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            Ok(t)
        }
        Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
        Err(_) => Err(format!("connect {host}:{port}: timed out")),
    }
}

async fn tls_stream(
    connector: &TlsConnector,
    host: &str,
    port: u16,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let t = tcp(host, port, timeout).await?;
    match tokio::time::timeout(timeout, connector.connect(name, t)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "TLS handshake with {host}:{port}: {}",
            error_chain(&e)
        )),
        Err(_) => Err(format!("TLS handshake with {host}:{port}: timed out")),
    }
}

/// Finishes a direct connection's handshake (AUTH, SELECT) in time and starts its driver.
async fn direct<F, D>(setup: F, timeout: Duration) -> Result<Con, String>
where
    F: std::future::Future<Output = redis::RedisResult<(MultiplexedConnection, D)>>,
    D: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::time::timeout(timeout, setup).await {
        Ok(Ok((con, driver))) => Ok(Con::Direct(con, Driver(tokio::spawn(driver)))),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: redis did not answer the handshake in time".into()),
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host} is not a valid TLS server name"))
}

/// Sentinels and the primary they watch.
pub struct Sentinels {
    sentinels: Vec<(String, u16)>,
    master: String,
    /// Username, password, db of the primary.
    info: RedisConnectionInfo,
    /// TLS to the Sentinels and the primary (`rediss+sentinel://`).
    tls: Option<TlsConnector>,
}

/// Sentinel's default port.
const SENTINEL_PORT: u16 = 26379;

impl Sentinels {
    /// `[user:password@]host[:port][,host[:port]…]/master_name[/db]` (after the scheme).
    fn parse(rest: &str, tls: Option<TlsConnector>) -> Result<Sentinels, String> {
        let (authority, path) = rest
            .split_once('/')
            .ok_or("redis+sentinel:// needs /master_name after the sentinels")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut sentinels = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            // `host`, `host:port`, `[v6]` or `[v6]:port`.
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !h.ends_with(']') => (
                    host,
                    port.parse::<u16>()
                        .map_err(|_| format!("sentinel port {port:?} is not a number"))?,
                ),
                _ => (h, SENTINEL_PORT),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("a sentinel has no host".into());
            }
            sentinels.push((host.to_string(), port));
        }
        if sentinels.is_empty() {
            return Err("redis+sentinel:// lists no sentinel".into());
        }
        let (master, db) = match path.split_once('/') {
            Some((m, db)) => (m, db),
            None => (path, ""),
        };
        if master.is_empty() || master.contains(char::is_whitespace) {
            return Err("redis+sentinel:// needs a master name: …/master_name[/db]".into());
        }
        // redis-rs decodes the user info and db; the host is a placeholder.
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let client = Client::open(format!("redis://{auth}sentinel.invalid/{db}"))
            .map_err(|e| e.to_string())?;
        if tls.is_some() {
            for (h, _) in &sentinels {
                server_name(h)?;
            }
        }
        Ok(Sentinels {
            sentinels,
            master: master.to_string(),
            info: client.get_connection_info().redis_settings().clone(),
            tls,
        })
    }

    /// Asks each Sentinel in turn for the primary, connects to it and checks it is one.
    async fn connect(&self, timeout: Duration) -> Result<(Con, PubSub), String> {
        let (con, host, port) = self.command(timeout).await?;
        let pubsub = match &self.tls {
            Some(c) => {
                let s = tls_stream(c, &host, port, server_name(&host)?, timeout).await?;
                tokio::time::timeout(timeout, PubSub::new(&self.info, s)).await
            }
            None => {
                let s = tcp(&host, port, timeout).await?;
                tokio::time::timeout(timeout, PubSub::new(&self.info, s)).await
            }
        };
        let pubsub = match pubsub {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("connect (pub/sub): {e}")),
            Err(_) => return Err("connect (pub/sub): timed out".into()),
        };
        tracing::debug!(primary = %format!("{host}:{port}"), master = %self.master, "sentinel: connected to the primary");
        Ok((con, pubsub))
    }

    /// A command connection to the primary, checked to be one; with its address.
    async fn command(&self, timeout: Duration) -> Result<(Con, String, u16), String> {
        let (host, port) = self.primary(timeout).await?;
        let mut con = self.open(&host, port, timeout, &self.info).await?;
        if !is_primary(&mut con).await? {
            return Err(format!(
                "sentinel named {host}:{port} as primary of {}, but it is a replica (failover in progress)",
                self.master
            ));
        }
        Ok((con, host, port))
    }

    async fn open(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        info: &RedisConnectionInfo,
    ) -> Result<Con, String> {
        let cfg = AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
        match &self.tls {
            Some(c) => {
                let s = tls_stream(c, host, port, server_name(host)?, timeout).await?;
                direct(
                    MultiplexedConnection::new_with_config(info, s, cfg),
                    timeout,
                )
                .await
            }
            None => {
                let s = tcp(host, port, timeout).await?;
                direct(
                    MultiplexedConnection::new_with_config(info, s, cfg),
                    timeout,
                )
                .await
            }
        }
    }

    /// The primary's address from the first Sentinel that knows it.
    async fn primary(&self, timeout: Duration) -> Result<(String, u16), String> {
        let mut errors = Vec::new();
        for (host, port) in &self.sentinels {
            let asked = async {
                let mut con = self
                    .open(host, *port, timeout, &RedisConnectionInfo::default())
                    .await?;
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| format!("sentinel {host}:{port}: {e}"))?;
                addr.ok_or_else(|| {
                    format!(
                        "sentinel {host}:{port} does not know a master named {}",
                        self.master
                    )
                })
            };
            match asked.await {
                Ok(a) => return Ok(a),
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "no sentinel named the primary: {}",
            errors.join("; ")
        ))
    }
}

/// `ROLE` says `master`.
pub async fn is_primary(con: &mut Con) -> Result<bool, String> {
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(con)
        .await
        .map_err(|e| format!("role: {e}"))?;
    Ok(matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
}

/// The background task that drives a direct connection; ended with the session.
pub struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A command connection of either kind.
pub enum Con {
    /// Through redis-rs's manager (plain TCP, unix sockets).
    Managed(ConnectionManager),
    /// Over our TLS stream, with the task that drives it.
    Direct(MultiplexedConnection, #[allow(dead_code)] Driver),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Con::Managed(c) => c.req_packed_command(cmd),
            Con::Direct(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Con::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Direct(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Managed(c) => c.get_db(),
            Con::Direct(c, _) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(url: &str) -> Result<Sentinels, String> {
        match Endpoint::new(url, None)? {
            Endpoint::Sentinel(s) => Ok(s),
            _ => Err("not a sentinel endpoint".into()),
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_credentials_and_db() {
        let s =
            sentinels("redis+sentinel://gw:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:5/mymaster/3")
                .unwrap();
        assert_eq!(
            s.sentinels,
            vec![
                ("10.0.0.1".to_string(), 26380),
                ("sentinel-b".to_string(), SENTINEL_PORT),
                ("::1".to_string(), 5),
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.info.db(), 3);
        assert_eq!(s.info.username(), Some("gw"));
        assert_eq!(s.info.password(), Some("p@ss"));
        assert!(s.tls.is_none());
    }

    #[test]
    fn bad_sentinel_urls_are_refused_without_quoting_the_password() {
        for url in [
            "redis+sentinel://u:SECRET@h1:26379",
            "redis+sentinel://u:SECRET@h1:26379/",
            "redis+sentinel://u:SECRET@/m",
            "redis+sentinel://u:SECRET@h1:port/m",
            "rediss+sentinel://u:SECRET@h1/m",
        ] {
            let e = sentinels(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert!(!e.contains("SECRET"), "{e}");
        }
    }
}
