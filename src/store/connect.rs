//! How the replica reaches Redis: `redis://` and `unix://` through redis-rs's own
//! connection manager; `rediss://` over a TLS stream this module opens with the gateway's
//! rustls config (Mozilla roots + `redis_ca_file`, server name checked, optional client
//! certificate), handed to redis-rs for the protocol (AUTH with the ACL user, SELECT).

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

use crate::upstream::error_chain;

/// Where Redis is and how to speak to it.
pub enum Endpoint {
    /// `redis://`, `unix://`.
    Plain(Client),
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
        let name = ServerName::try_from(bare.clone())
            .map_err(|_| format!("{bare} is not a valid TLS server name"))?;
        Ok(Endpoint::Tls {
            host: bare,
            port,
            name,
            connector: TlsConnector::from(tls),
            info: info.redis_settings().clone(),
        })
    }

    /// The command connection.
    pub async fn command(&self, timeout: Duration) -> Result<Con, String> {
        match self {
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
                match tokio::time::timeout(timeout, setup).await {
                    Ok(Ok((con, driver))) => Ok(Con::Direct(con, Driver(tokio::spawn(driver)))),
                    Ok(Err(e)) => Err(format!("connect: {e}")),
                    Err(_) => Err("connect: redis did not answer the handshake in time".into()),
                }
            }
        }
    }

    /// The subscription connection.
    pub async fn pubsub(&self, timeout: Duration) -> Result<PubSub, String> {
        let r = match self {
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
        let connect = async {
            let tcp = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host}:{port}: {}", error_chain(&e)))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect: {host}:{port} timed out")),
        }
    }
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
