//! Pace as a layer: the exchange's pace step ([`Pacing::pace`]). A send within its phone
//! number's pace goes to the limit layer at once; one over it sleeps until its slot (a
//! timer in its own future: no thread, lock or permit held while it waits), is guarded
//! again ([`Waiting::waited`]) and goes on; one past `max_delay` is answered here with
//! Meta's 130429.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tower::{Layer, Service};

use super::guard::{known_body, local};
use super::step::StepFuture;
use super::{render, Body, Exchanging};
use crate::policy::exchange::{Admission, Guarded, Pace as Paced, Pacing};
use crate::policy::{ForwardError, Policy};

/// See module docs.
#[derive(Clone)]
pub struct PaceLayer {
    policy: Arc<Policy>,
}

impl PaceLayer {
    /// Paces with `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        PaceLayer { policy }
    }
}

impl<S> Layer<S> for PaceLayer {
    type Service = Pace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Pace {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`PaceLayer`].
#[derive(Clone)]
pub struct Pace<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Service<Exchanging<Pacing>> for Pace<S>
where
    S: Service<Exchanging<Guarded>, Response = Response<Body>, Error = ForwardError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = StepFuture<S::Future, ForwardError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, x: Exchanging<Pacing>) -> Self::Future {
        let Exchanging { req, state } = x;
        match state.pace(&self.policy, known_body(&req), |r| render(&r)) {
            Paced::Go(state) => StepFuture::Inner {
                fut: self.inner.call(Exchanging { req, state }),
            },
            Paced::Local(response, settle) => local(&self.policy, response, settle),
            Paced::Wait(waiting) => {
                // The ready inner service goes with the future (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let policy = self.policy.clone();
                StepFuture::Boxed {
                    fut: Box::pin(async move {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(waiting.until()))
                            .await;
                        match waiting.waited(&policy, known_body(&req), |r| render(&r)) {
                            Admission::Go(state) => inner.call(Exchanging { req, state }).await,
                            Admission::Local(response, settle) => {
                                settle.done(&policy).await;
                                Ok(response)
                            }
                        }
                    }),
                }
            }
        }
    }
}
