//! Background work that holds leases in the store (dispatch jobs,
//! callbacks), tracked so that a graceful shutdown can let it finish within
//! a grace period and name what it had to abandon, whose leases then go back.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

pub struct LeasedWork<K> {
    tasks: JoinSet<()>,
    keys: HashMap<Id, K>,
}

impl<K> Default for LeasedWork<K> {
    fn default() -> Self {
        LeasedWork {
            tasks: JoinSet::new(),
            keys: HashMap::new(),
        }
    }
}

impl<K> LeasedWork<K> {
    /// Runs `work` for the item `key` leased.
    pub fn spawn(&mut self, key: K, work: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(work);
        self.keys.insert(handle.id(), key);
    }

    /// Forgets finished work, so the set does not grow.
    pub fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.keys
                .remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
        }
    }

    /// Waits up to `grace` for the work under way, aborts the rest and
    /// returns the keys of what did not finish.
    pub async fn drain(mut self, grace: Duration) -> Vec<K> {
        let deadline = tokio::time::Instant::now() + grace;
        while let Ok(Some(done)) =
            tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await
        {
            self.keys
                .remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.keys.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_names_only_the_unfinished() {
        let mut work = LeasedWork::default();
        work.spawn(1, async {});
        work.spawn(2, std::future::pending());
        work.spawn(3, tokio::time::sleep(Duration::from_millis(5)));
        tokio::task::yield_now().await;
        let left = work.drain(Duration::from_millis(200)).await;
        assert_eq!(left, [2]);
    }
}
