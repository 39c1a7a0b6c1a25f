//! Classify as a layer, over the forwarder: the exchange's answer steps. The answer's head
//! must arrive by [`Admitted::deadline`] (else 504); [`Admitted::answered`] says whether to
//! read it; a non-2xx body is read (capped, by the same deadline) so [`Reading::judge`] can
//! classify it, which releases the upstream permit; the request settles (a trip waits until
//! it is durable; the outcome is recorded once) and the answer goes back to the app byte for
//! byte. 2xx answers are streamed untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::body::{self, Body};
use super::step::BoxFuture;
use super::Exchanging;
use crate::common::error_chain;
use crate::graph::route::Kind;
use crate::policy::exchange::{Admitted, Answered, Reading};
use crate::policy::framing::{content_length, Codings};
use crate::policy::{Answer, ForwardError, Policy};
use crate::upstream::OwnedPermit;

/// See module docs.
#[derive(Clone)]
pub struct ClassifyLayer {
    policy: Arc<Policy>,
}

impl ClassifyLayer {
    /// Judges answers with `policy` (whose `request_timeout` bounds the head and an error
    /// body).
    pub fn new(policy: Arc<Policy>) -> Self {
        ClassifyLayer { policy }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`ClassifyLayer`].
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Service<Exchanging<Admitted<OwnedPermit>>> for Classify<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ForwardError>,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, x: Exchanging<Admitted<OwnedPermit>>) -> Self::Future {
        let Exchanging { req, state } = x;
        // A send body the guard holds whole goes with the answer to the classifier (a
        // 132015/132016 answer is judged against its template); a refcount clone.
        let sent = match req.body() {
            Body::Full { data } if state.call().kind == Kind::Send => data.clone(),
            _ => None,
        };
        let deadline = tokio::time::Instant::from_std(state.deadline());
        ResponseFuture {
            fut: self.inner.call(req),
            sleep: tokio::time::sleep_until(deadline),
            ctx: Some((self.policy.clone(), state, sent)),
            read: None,
        }
    }
}

pin_project! {
    /// The inner answer by the deadline, then read and judged only when it is an error.
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Sleep,
        // The policy, the exchange and the send's body when the guard kept it whole.
        ctx: Option<(Arc<Policy>, Admitted<OwnedPermit>, Option<Bytes>)>,
        read: Option<BoxFuture<Result<Response<Body>, ForwardError>>>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ForwardError>>,
{
    type Output = Result<Response<Body>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(read) = this.read.as_mut() {
            return read.as_mut().poll(cx);
        }
        let result = match this.fut.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                ready!(this.sleep.as_mut().poll(cx));
                let Some((_, admitted, _)) = this.ctx.take() else {
                    panic!("classify future polled after completion");
                };
                let e = ForwardError::Timeout(admitted.timeout());
                failed(admitted, &e);
                return Poll::Ready(Err(e));
            }
        };
        let Some((policy, admitted, sent)) = this.ctx.take() else {
            panic!("classify future polled after completion");
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                failed(admitted, &e);
                return Poll::Ready(Err(e));
            }
        };
        let status = resp.status().as_u16();
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| content_length(v.as_bytes()));
        match admitted.answered(&policy, status, declared) {
            Answered::Pass(settle) => {
                // Nothing to acknowledge on an answer that was not judged.
                let _ = settle.now();
                Poll::Ready(Ok(resp))
            }
            Answered::Read(reading) => {
                let mut fut: BoxFuture<_> = Box::pin(classify(resp, policy, reading, sent));
                let poll = fut.as_mut().poll(cx);
                *this.read = Some(fut);
                poll
            }
        }
    }
}

/// The forward failed (or missed its deadline): recorded by the exchange, answered by the
/// edge.
fn failed(admitted: Admitted<OwnedPermit>, e: &ForwardError) {
    match e {
        ForwardError::ClientTimeout => {
            tracing::debug!("client request body not in within client_body_timeout: answered 408")
        }
        ForwardError::ClientBody(_) => {
            tracing::info!(error = %error_chain(e), "client request body broken: answered 400")
        }
        _ => tracing::warn!(error = %error_chain(e), "upstream request failed"),
    }
    admitted.failed(e);
}

/// Reads an error answer's body by the deadline, judges it, settles.
async fn classify(
    resp: Response<Body>,
    policy: Arc<Policy>,
    reading: Reading<OwnedPermit>,
    sent: Option<Bytes>,
) -> Result<Response<Body>, ForwardError> {
    let (parts, body) = resp.into_parts();
    let deadline = tokio::time::Instant::from_std(reading.deadline());
    let read = tokio::time::timeout_at(deadline, body::buffer(body, reading.limit())).await;
    let bytes = match read {
        Err(_) => {
            let e = ForwardError::Timeout(reading.timeout());
            tracing::warn!(error = %error_chain(&e), "upstream request failed");
            reading.failed(&e);
            return Err(e);
        }
        Ok(Err(e)) => {
            let e = ForwardError::Broken(e);
            tracing::warn!(error = %error_chain(&e), "upstream request failed");
            reading.failed(&e);
            return Err(e);
        }
        Ok(Ok(Err(too_big))) => {
            reading.too_large().done(&policy).await;
            return Ok(Response::from_parts(parts, too_big));
        }
        Ok(Ok(Ok(bytes))) => bytes,
    };
    let codings = Codings::collect(
        parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let answer = Answer {
        status: parts.status.as_u16(),
        content_encoding: codings.as_slice(),
        retry_after: parts.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        body: &bytes,
        request: sent.as_deref(),
    };
    // The permit is released here; a tripping answer reaches the app once it is durable.
    reading.judge(&policy, answer).done(&policy).await;
    Ok(Response::from_parts(parts, Body::full(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::exchange::{Admission, Guard, Routed};
    use crate::policy::testing::{self, WABA};
    use crate::policy::Mode;
    use crate::proxy::guard::known_body;
    use crate::proxy::render;
    use crate::upstream::Limiter;
    use std::time::Duration;
    use tower::ServiceExt;
    use tower_test::mock;

    const BLOCKED: &str = r#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"fbtrace_id":"AbC"}}"#;

    fn policy() -> Arc<Policy> {
        Arc::new(testing::policy(Mode::Enforce, 64 * 1024))
    }

    fn request(p: &Policy, method: http::Method, edge: &str) -> Request<Body> {
        crate::proxy::testing::request(p, method, edge, Body::empty())
    }

    /// The request as the limit layer hands it down: guarded, with a permit.
    fn admitted(p: &Policy, req: Request<Body>) -> Exchanging<Admitted<OwnedPermit>> {
        let routed = Routed::new(crate::proxy::route::Target::of(&req));
        let Guard::Go(pacing) = routed.admit(p, known_body(&req), |r| render(&r)) else {
            panic!("closed circuits let everything go")
        };
        let crate::policy::exchange::Pace::Go(guarded) =
            pacing.pace(p, known_body(&req), |r| render(&r))
        else {
            panic!("within the pace")
        };
        let permit = Arc::new(Limiter::new(1, crate::upstream::Queue::UNBOUNDED))
            .try_acquire_owned()
            .unwrap();
        let Admission::Go(state) = guarded.permitted(p, permit, known_body(&req), |r| render(&r))
        else {
            panic!("closed circuits let everything go")
        };
        Exchanging { req, state }
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
        let fut = tokio::spawn(svc.oneshot(admitted(p, req)));
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
        let req =
            crate::proxy::testing::request(&p, http::Method::POST, "messages", Body::full(SEND));
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
