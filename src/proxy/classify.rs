//! Classify: on a non-2xx upstream answer, read the (capped) body, parse the Graph error
//! envelope, and trip the WABA's circuit on a configured enforcement code. The answer goes
//! back to the app byte for byte either way; 2xx answers are never touched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use chrono::Utc;
use http::{header, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::body::{self, Body};
use super::error::ProxyError;
use super::guard::LocalReply;
use super::route::{Resolved, Target};
use crate::circuit::{Action, Change, Evidence, Scope, Source, Table};
use crate::graph::envelope;
use crate::metrics::METRICS;

struct Shared {
    table: Arc<Table>,
    trip_codes: Vec<i64>,
    limit: usize,
}

/// See module docs.
#[derive(Clone)]
pub struct ClassifyLayer {
    shared: Arc<Shared>,
}

impl ClassifyLayer {
    /// Trips `table` circuits on `trip_codes`; error bodies over `limit` bytes pass unclassified.
    pub fn new(table: Arc<Table>, trip_codes: Vec<i64>, limit: usize) -> Self {
        ClassifyLayer {
            shared: Arc::new(Shared {
                table,
                trip_codes,
                limit,
            }),
        }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`ClassifyLayer`].
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Classify<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let resolved = req
            .extensions()
            .get::<Target>()
            .and_then(|t| t.resolved.clone());
        ResponseFuture {
            state: State::Call {
                fut: self.inner.call(req),
            },
            ctx: Some((self.shared.clone(), resolved)),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Call { #[pin] fut: F },
        Read { fut: BoxFuture<Result<Response<Body>, ProxyError>> },
    }
}

pin_project! {
    /// The inner answer, read and classified only when it is an error.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        ctx: Option<(Arc<Shared>, Option<Resolved>)>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Call { fut } => {
                    let resp = ready!(fut.poll(cx))?;
                    if resp.status().is_success() || resp.extensions().get::<LocalReply>().is_some()
                    {
                        return Poll::Ready(Ok(resp));
                    }
                    let Some((shared, resolved)) = this.ctx.take() else {
                        return Poll::Ready(Ok(resp));
                    };
                    this.state.set(State::Read {
                        fut: Box::pin(classify(resp, shared, resolved)),
                    });
                }
                StateProj::Read { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

async fn classify(
    resp: Response<Body>,
    shared: Arc<Shared>,
    resolved: Option<Resolved>,
) -> Result<Response<Body>, ProxyError> {
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > shared.limit) {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body::buffer(body, shared.limit).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(too_big)) => return Ok(Response::from_parts(parts, too_big)),
        Err(e) => {
            METRICS.upstream_error.inc();
            tracing::warn!(error = %e, "upstream error body broke off");
            return Err(ProxyError::Broken(e.to_string()));
        }
    };
    judge(
        &shared.table,
        &shared.trip_codes,
        parts.status.as_u16(),
        &bytes,
        resolved.as_ref(),
    );
    Ok(Response::from_parts(parts, Body::full(bytes)))
}

/// Judges a non-2xx answer's body: counts its Graph error code and trips the WABA's circuit
/// on a trip code. Shared with the relay.
pub fn judge(
    table: &Table,
    trip_codes: &[i64],
    status: u16,
    body: &[u8],
    resolved: Option<&Resolved>,
) {
    if let Some(err) = envelope::parse(body) {
        METRICS.upstream_code(err.code);
        if let Some(r) = resolved.filter(|_| trip_codes.contains(&err.code)) {
            trip(table, r, status, err);
        }
    }
}

fn trip(table: &Table, r: &Resolved, status: u16, err: envelope::GraphError) {
    let reason = if err.message.is_empty() {
        format!("HTTP {status}, Graph error {}", err.code)
    } else {
        err.message.clone()
    };
    table.apply(Change {
        waba_id: r.waba.to_string(),
        action: Action::Open {
            scope: Scope::AllSends,
            code: Some(err.code),
            until: None,
        },
        source: Source::Send,
        at: Utc::now(),
        reason,
        evidence: Some(Evidence::Send {
            code: err.code,
            error_subcode: err.error_subcode,
            message: err.message,
            fbtrace_id: err.fbtrace_id,
            phone_number_id: Some(r.phone.to_string()),
        }),
    });
}
