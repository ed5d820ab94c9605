//! Long-lived response streams (etcd's Watch, LeaseKeepAlive, Observe) end
//! when the node stops: a client holds them open for as long as it runs, so
//! a shutdown would otherwise wait its whole grace period for them, then cut
//! the connection. They end with `Unavailable`, which clients retry on
//! another member (resuming a watch from its last revision).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use raftkv_replica::Replica;
use tonic::Status;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `inner`, ending with `Unavailable` once `replica`'s node has stopped.
pub fn until_stopped<T: Send + 'static>(
    replica: &Replica,
    inner: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Boxed<T> {
    let node = replica.node_id();
    let replica = replica.clone();
    Box::pin(UntilStopped {
        inner: Box::pin(inner),
        stopped: Box::pin(async move {
            replica.stopped().await;
        }),
        node,
        done: false,
    })
}

struct UntilStopped<T> {
    inner: Boxed<T>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    node: u64,
    done: bool,
}

impl<T> Stream for UntilStopped<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.stopped.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(Status::unavailable(format!(
                "node {} is shutting down; continue on another member",
                this.node
            )))));
        }
        this.inner.as_mut().poll_next(cx)
    }
}
