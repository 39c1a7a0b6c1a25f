//! The future the guard and limit layers return: a local answer ready now, the inner
//! service's call, or — off the common path — a boxed wait (a body read, a permit, a
//! durable acknowledgement).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::Body;

/// A boxed step of the slow path.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// See the module docs.
    #[project = StepProj]
    pub enum StepFuture<F, E> {
        /// Answered locally, settled.
        Ready { response: Option<Response<Body>> },
        /// The inner service's call.
        Inner { #[pin] fut: F },
        /// A wait first.
        Boxed { fut: BoxFuture<Result<Response<Body>, E>> },
    }
}

impl<F, E> Future for StepFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StepProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("step future polled after completion"),
            },
            StepProj::Inner { fut } => fut.poll(cx),
            StepProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
