//! Classify as a layer, over the forwarder: asks [`Policy::inspect`] on the answer's head,
//! reads a non-2xx body (capped) so [`Policy::classify`] can judge it, and records the
//! request's outcome ([`Policy::record`]) once. The answer goes back to the app byte for
//! byte either way; 2xx answers are streamed untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::guard::SendBody;
use super::route::Target;
use super::LocalReply;
use crate::common::body::{self, Body};
use crate::policy::{Answer, Call, Inspect, Outcome, Policy};
use crate::upstream::{error_chain, ForwardError};

/// See module docs.
#[derive(Clone)]
pub struct ClassifyLayer {
    policy: Arc<Policy>,
    deadline: Duration,
}

impl ClassifyLayer {
    /// Judges answers with `policy`; an error body must be read within `request_timeout`
    /// of forwarding (see [`ClassifyLayer::deadline`]).
    pub fn new(policy: Arc<Policy>) -> Self {
        ClassifyLayer {
            policy,
            deadline: Duration::from_secs(30),
        }
    }

    /// An error body not read in full `deadline` after the request was forwarded fails
    /// the request with 504, so a stalled body never holds its upstream permit past it.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            policy: self.policy.clone(),
            deadline: self.deadline,
        }
    }
}

/// See [`ClassifyLayer`].
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    policy: Arc<Policy>,
    deadline: Duration,
}

impl<S> Service<Request<Body>> for Classify<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ForwardError>,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let target = Target::of(&req);
        let sent = req.extensions().get::<SendBody>().map(|b| b.0.clone());
        ResponseFuture {
            state: State::Call {
                fut: self.inner.call(req),
            },
            ctx: Some((self.policy.clone(), target, sent)),
            start: Instant::now(),
            deadline: self.deadline,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Call { #[pin] fut: F },
        Read { fut: BoxFuture<Result<Response<Body>, ForwardError>> },
    }
}

pin_project! {
    /// The inner answer, read and classified only when it is an error.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        // The policy, the call and the send's body when the guard kept it.
        ctx: Option<(Arc<Policy>, Call, Option<Bytes>)>,
        start: Instant,
        deadline: Duration,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ForwardError>>,
{
    type Output = Result<Response<Body>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Call { fut } => {
                    let result = ready!(fut.poll(cx));
                    let elapsed = this.start.elapsed();
                    let Some((policy, target, sent)) = this.ctx.take() else {
                        return Poll::Ready(result);
                    };
                    let resp = match result {
                        Ok(resp) => resp,
                        Err(e) => {
                            failed(&policy, target, &e, elapsed);
                            return Poll::Ready(Err(e));
                        }
                    };
                    if resp.extensions().get::<LocalReply>().is_some() {
                        return Poll::Ready(Ok(resp));
                    }
                    this.state.set(State::Read {
                        fut: Box::pin(classify(
                            resp,
                            policy,
                            target,
                            sent,
                            elapsed,
                            this.deadline.saturating_sub(elapsed),
                        )),
                    });
                }
                StateProj::Read { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

fn failed(policy: &Policy, call: Call, e: &ForwardError, after: Duration) {
    if let ForwardError::ClientTimeout = e {
        // Counted in wa_breaker_client_timeouts_total, as on the relay.
        tracing::debug!("client request body not in within client_body_timeout: answered 408");
        return;
    }
    if let ForwardError::ClientBody(_) = e {
        tracing::info!(error = %error_chain(e), "client request body broken: answered 400");
        policy.record(call, Outcome::ClientBody);
        return;
    }
    tracing::warn!(error = %error_chain(e), "upstream request failed");
    policy.record(call, Outcome::Failed { after });
}

async fn classify(
    resp: Response<Body>,
    policy: Arc<Policy>,
    call: Call,
    sent: Option<Bytes>,
    to_head: Duration,
    left: Duration,
) -> Result<Response<Body>, ForwardError> {
    let status = resp.status().as_u16();
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Inspect::Read { limit } = policy.inspect(status, declared) else {
        policy.record(call, Outcome::Answered { status, to_head });
        return Ok(resp);
    };
    let (parts, body) = resp.into_parts();
    let read = match tokio::time::timeout(left, body::buffer(body, limit)).await {
        Ok(read) => read,
        Err(_) => {
            let e = ForwardError::Timeout(to_head + left);
            failed(&policy, call, &e, to_head + left);
            return Err(e);
        }
    };
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(too_big)) => {
            policy.record(call, Outcome::Answered { status, to_head });
            return Ok(Response::from_parts(parts, too_big));
        }
        Err(e) => {
            let e = ForwardError::Broken(e);
            failed(&policy, call, &e, to_head);
            return Err(e);
        }
    };
    let codings: Vec<&[u8]> = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let answer = Answer {
        status,
        content_encoding: &codings,
        retry_after: parts.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        body: &bytes,
        request: sent.as_deref(),
    };
    let unacked = policy.classify(call, answer);
    policy.record(call, Outcome::Answered { status, to_head });
    // A tripping answer reaches the app only once the open is durable. (The upstream
    // permit is held meanwhile: on this engine it is released when the answer is returned.)
    if let Some(seq) = unacked {
        policy.acknowledged(seq).await;
    }
    Ok(Response::from_parts(parts, Body::full(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::policy::testing::{self, WABA};
    use tower::ServiceExt;
    use tower_test::mock;

    const BLOCKED: &str = r#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"fbtrace_id":"AbC"}}"#;

    fn policy() -> Arc<Policy> {
        Arc::new(testing::policy(Mode::Enforce, 64 * 1024))
    }

    fn request(p: &Policy, method: http::Method, edge: &str) -> Request<Body> {
        testing::request(p, method, edge, Body::empty())
    }

    fn answer(status: u16, body: &'static str) -> Response<Body> {
        let mut r = Response::new(Body::full(body));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    }

    async fn through(
        p: &Arc<Policy>,
        req: Request<Body>,
        reply: Result<Response<Body>, ForwardError>,
    ) -> Result<Response<Body>, ForwardError> {
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = ClassifyLayer::new(p.clone()).layer(inner.map_err(ForwardError::Broken));
        handle.allow(1);
        let fut = tokio::spawn(svc.oneshot(req));
        let (_, send) = handle.next_request().await.unwrap();
        match reply {
            Ok(r) => send.send_response(r),
            Err(e) => send.send_error(e),
        }
        fut.await.unwrap()
    }

    #[tokio::test]
    async fn a_368_to_a_send_trips_and_passes_back_unchanged() {
        let p = policy();
        let resp = through(
            &p,
            request(&p, http::Method::POST, "messages"),
            Ok(answer(403, BLOCKED)),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 403);
        let Body::Full { data } = resp.body() else {
            panic!("buffered")
        };
        assert_eq!(data.as_deref(), Some(BLOCKED.as_bytes()));
        let c = p.table().get(WABA).unwrap();
        assert!(c.is_open());
        assert_eq!(c.code, Some(368));
    }

    #[tokio::test]
    async fn other_calls_and_successes_trip_nothing() {
        let p = policy();
        for (method, edge, status, body) in [
            (http::Method::POST, "register", 403, BLOCKED),
            (http::Method::GET, "", 403, BLOCKED),
            (http::Method::POST, "messages", 200, BLOCKED),
            (http::Method::POST, "messages", 403, "<html>no</html>"),
        ] {
            let resp = through(&p, request(&p, method, edge), Ok(answer(status, body)))
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
        }
        assert!(p.table().get(WABA).is_none());
    }

    /// A 132016 to a send whose body the guard kept opens that template's circuit; without
    /// the body nothing opens.
    #[tokio::test]
    async fn a_template_code_opens_the_kept_bodys_template() {
        const DISABLED: &str = r#"{"error":{"message":"(#132016) Template is disabled","code":132016,"fbtrace_id":"TpL"}}"#;
        const SEND: &str =
            r#"{"type":"template","template":{"name":"order_update","language":{"code":"en_US"}}}"#;
        let key = format!("template:{WABA}:order_update:en_US");
        let p = policy();
        let resp = through(
            &p,
            request(&p, http::Method::POST, "messages"),
            Ok(answer(400, DISABLED)),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 400);
        assert!(p.table().get(&key).is_none());
        let mut req = request(&p, http::Method::POST, "messages");
        req.extensions_mut()
            .insert(SendBody(bytes::Bytes::from_static(SEND.as_bytes())));
        let resp = through(&p, req, Ok(answer(400, DISABLED))).await.unwrap();
        assert_eq!(resp.status(), 400);
        let c = p.table().get(&key).unwrap();
        assert!(c.is_open());
        assert_eq!(c.code, Some(132016));
        assert!(p.table().get(WABA).is_none());
    }

    #[tokio::test]
    async fn a_failed_forward_is_passed_up() {
        let p = policy();
        let r = through(
            &p,
            request(&p, http::Method::POST, "messages"),
            Err(ForwardError::Timeout(Duration::from_secs(1))),
        )
        .await;
        assert!(matches!(r, Err(ForwardError::Broken(_))));
        assert!(p.table().get(WABA).is_none());
    }
}
