//! Waiting for a reflector store's first list when several tasks wait for it at once.
//!
//! Only for stores no one else waits on: a waiter here takes the store's one waker every 50 ms
//! from any other task waiting on it (kube's own applier waits on the instance store, so the
//! channel driver waits on a signal of its own).
//!
//! Why not `Store::wait_until_ready` alone: in kube-runtime 5.0.0 every clone of a store shares
//! one `DelayedInit`, which polls one `futures` oneshot receiver, and that receiver keeps one
//! waker, the last poller's. Of several tasks waiting together only the last to poll is woken
//! when the list is in; the others sleep until something else wakes them. Found as the first
//! passes after an operator start waiting the whole ten seconds of
//! [`crate::child_cache::FIRST_LIST_WAIT`] while the passes after them went on at once.
//! (`tests::kube_wakes_only_the_last_of_several_waiters` fails once kube-runtime fixes it;
//! this module can go then.)

use std::hash::Hash;
use std::time::Duration;

use kube::runtime::reflector::Lookup;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::WriterDropped;

/// How often a waiter looks again. The store memoizes readiness once any poll sees it, so a
/// waiter that was not woken sees it at its next look: at most this late, and only while a
/// store is listing for the first time.
const LOOK_AGAIN_EVERY: Duration = Duration::from_millis(50);

/// Waits until `store` has had its first list, like `Store::wait_until_ready`, also when other
/// tasks wait for the same store at the same time. Fails when the store's writer is dropped
/// before that (its watch stopped).
pub(crate) async fn store_ready<K>(store: &Store<K>) -> Result<(), WriterDropped>
where
    K: 'static + Clone + Lookup,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(LOOK_AGAIN_EVERY, store.wait_until_ready()).await {
            return ready;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    use super::store_ready;

    /// Starts `waiters` tasks that each wait for the store's first list (with `wait`) and
    /// counts how many are through 500 ms after the list is in.
    async fn through_after_the_list<F, Fut>(waiters: usize, wait: F) -> usize
    where
        F: Fn(kube::runtime::reflector::Store<ConfigMap>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut writer: Writer<ConfigMap> = Writer::default();
        let through = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..waiters {
            let waiting = wait(writer.as_reader());
            let through = through.clone();
            tasks.push(tokio::spawn(async move {
                waiting.await;
                through.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // Every waiter has polled (and so registered) before the list comes in.
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = through.load(Ordering::SeqCst);
        for task in tasks {
            task.abort();
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_one_of_several_waiters_sees_the_first_list() {
        let through = through_after_the_list(8, |store| async move {
            store_ready(&store).await.unwrap();
        })
        .await;
        assert_eq!(through, 8, "waiters through 500 ms after the list");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_writer_ends_the_wait_with_an_error() {
        let writer: Writer<ConfigMap> = Writer::default();
        let store = writer.as_reader();
        drop(writer);
        let waited = tokio::time::timeout(Duration::from_secs(1), store_ready(&store)).await;
        assert!(matches!(waited, Ok(Err(_))), "{waited:?}");
    }

    /// The defect this module works around. When this fails, kube-runtime wakes every waiter
    /// and `store_ready` can be replaced by `Store::wait_until_ready`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_wakes_only_the_last_of_several_waiters() {
        let through = through_after_the_list(8, |store| async move {
            store.wait_until_ready().await.unwrap();
        })
        .await;
        assert!(through < 8, "every waiter was woken: kube-runtime fixed it");
    }
}
