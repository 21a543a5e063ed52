//! In-memory copies of what every trigger looks up: keys, accounts, agents
//! and rates.
//!
//! A trigger must not wait on the database to learn who is calling and which
//! agent version to run, so these live in memory as immutable snapshots
//! swapped whole. A refresher polls the store's revision counters and
//! reloads a snapshot when its counter moves, so a change made by another
//! process (`herald keys revoke`, `herald limits set`, another instance) is
//! seen within one poll; changes made through this server's own API reload
//! at once. Published agent versions, which never change, are kept as
//! they are first read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use herald_core::keys::{hash_key, hashes_equal, KeyHash};
use herald_core::webhook::SigningKey;
use herald_core::{AccountId, AgentId, Channel, Region};
use herald_store::{AgentIndexRow, AgentVersion, Revisions, Store};

/// Published versions kept in memory; past this many the cache starts over,
/// so a long-lived server with many agents holds a bounded number.
const MAX_VERSIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub webhook_secret: String,
    pub signing_key: Option<SigningKey>,
}

#[derive(Default)]
struct Keys {
    /// Keyed by the first half of the hash; the whole hash is then compared
    /// in constant time, so the lookup's timing reveals nothing useful.
    by_prefix: HashMap<[u8; 16], Vec<(KeyHash, AccountId)>>,
}

#[derive(Default)]
struct Agents {
    by_id: HashMap<AgentId, AgentIndexRow>,
    /// Published numbers, per account: the legacy `from` lookup.
    by_number: HashMap<(AccountId, String), Vec<AgentId>>,
}

#[derive(Default)]
pub struct Directory {
    keys: RwLock<Arc<Keys>>,
    accounts: RwLock<Arc<HashMap<AccountId, Account>>>,
    agents: RwLock<Arc<Agents>>,
    rates: RwLock<Arc<HashMap<AgentId, u32>>>,
    seen: RwLock<Revisions>,
    /// Published versions read so far: a session's every wake needs its
    /// flow, and a published version is immutable (CONTRACT §4.3), so no
    /// change elsewhere can make a copy stale.
    versions: Mutex<HashMap<(AgentId, u32), Arc<AgentVersion>>>,
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn swap<T>(lock: &RwLock<Arc<T>>, value: T) {
    *lock.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
}

fn prefix(hash: &KeyHash) -> [u8; 16] {
    hash[..16].try_into().expect("a key hash has 32 bytes")
}

impl Directory {
    pub async fn load(store: &dyn Store) -> anyhow::Result<Self> {
        let dir = Directory::default();
        let revisions = store.revisions().await?;
        dir.reload_keys(store).await?;
        dir.reload_agents(store).await?;
        dir.reload_rates(store).await?;
        *dir.seen.write().unwrap_or_else(|e| e.into_inner()) = revisions;
        Ok(dir)
    }

    /// Reloads whatever changed since the last look.
    /// Reloads what changed elsewhere; returns the store's revisions.
    pub async fn refresh(&self, store: &dyn Store) -> anyhow::Result<Revisions> {
        let now = store.revisions().await?;
        let seen = *self.seen.read().unwrap_or_else(|e| e.into_inner());
        if now == seen {
            return Ok(now);
        }
        if now.keys != seen.keys {
            self.reload_keys(store).await?;
        }
        if now.agents != seen.agents {
            self.reload_agents(store).await?;
        }
        if now.limits != seen.limits {
            self.reload_rates(store).await?;
        }
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(now)
    }

    pub async fn reload_keys(&self, store: &dyn Store) -> anyhow::Result<()> {
        let mut keys = Keys::default();
        for row in store.keys().await?.into_iter().filter(|k| !k.revoked) {
            keys.by_prefix
                .entry(prefix(&row.hash))
                .or_default()
                .push((row.hash, row.account_id));
        }
        let accounts = store
            .accounts()
            .await?
            .into_iter()
            .map(|a| {
                let signing_key = SigningKey::from_secret(&a.webhook_secret).ok();
                let account = Account {
                    id: a.id,
                    name: a.name,
                    webhook_secret: a.webhook_secret,
                    signing_key,
                };
                (a.id, account)
            })
            .collect();
        swap(&self.keys, keys);
        swap(&self.accounts, accounts);
        Ok(())
    }

    pub async fn reload_agents(&self, store: &dyn Store) -> anyhow::Result<()> {
        let mut agents = Agents::default();
        for row in store.agent_index().await? {
            if let Some((_, number)) = &row.published {
                agents
                    .by_number
                    .entry((row.account_id, number.clone()))
                    .or_default()
                    .push(row.agent_id.clone());
            }
            agents.by_id.insert(row.agent_id.clone(), row);
        }
        swap(&self.agents, agents);
        Ok(())
    }

    pub async fn reload_rates(&self, store: &dyn Store) -> anyhow::Result<()> {
        swap(&self.rates, store.rates().await?.into_iter().collect());
        Ok(())
    }

    /// A published version of an agent, from memory once it has been read.
    pub async fn agent_version(
        &self,
        store: &dyn Store,
        id: &AgentId,
        version: u32,
    ) -> Result<Option<Arc<AgentVersion>>, herald_store::StoreError> {
        let key = (id.clone(), version);
        if let Some(found) = self.versions().get(&key) {
            return Ok(Some(found.clone()));
        }
        let Some(found) = store.agent_version(id, version).await? else {
            return Ok(None);
        };
        let found = Arc::new(found);
        let mut versions = self.versions();
        if versions.len() >= MAX_VERSIONS {
            versions.clear();
        }
        versions.insert(key, found.clone());
        Ok(Some(found))
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<(AgentId, u32), Arc<AgentVersion>>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account a key belongs to, if the key is live.
    pub fn authenticate(&self, key: &str) -> Option<AccountId> {
        let hash = hash_key(key);
        let keys = read(&self.keys);
        keys.by_prefix
            .get(&prefix(&hash))?
            .iter()
            .find(|(stored, _)| hashes_equal(stored, &hash))
            .map(|(_, account)| *account)
    }

    pub fn account(&self, id: AccountId) -> Option<Account> {
        read(&self.accounts).get(&id).cloned()
    }

    pub fn agent(&self, id: &AgentId) -> Option<AgentIndexRow> {
        read(&self.agents).by_id.get(id).cloned()
    }

    /// The account's published agent with this number: one of `channel` in
    /// `region` if there is one, else one of `channel`, else any, so that
    /// the caller can say what is wrong with it.
    pub fn agent_by_number(
        &self,
        account: AccountId,
        number: &str,
        channel: Channel,
        region: Region,
    ) -> Option<AgentIndexRow> {
        let agents = read(&self.agents);
        let ids = agents.by_number.get(&(account, number.to_owned()))?;
        let rows: Vec<&AgentIndexRow> = ids.iter().filter_map(|id| agents.by_id.get(id)).collect();
        rows.iter()
            .find(|r| r.channel == channel && r.region == region)
            .or_else(|| rows.iter().find(|r| r.channel == channel))
            .or_else(|| rows.first())
            .map(|r| (*r).clone())
    }

    /// The published agent of `channel` in `region` with this number,
    /// whatever its account: where a provider's inbound message goes.
    pub fn agent_for_number(
        &self,
        number: &str,
        channel: Channel,
        region: Region,
    ) -> Option<AgentIndexRow> {
        let agents = read(&self.agents);
        agents
            .by_id
            .values()
            .filter(|r| r.channel == channel && r.region == region)
            .find(|r| r.published.as_ref().is_some_and(|(_, n)| n == number))
            .cloned()
    }

    pub fn rate(&self, id: &AgentId) -> Option<u32> {
        read(&self.rates).get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use herald_core::flow::FlowDefinition;
    use herald_store::sqlite::SqliteStore;
    use herald_store::{AccountStore, AgentStore, NewAgent, StoreOptions};

    use super::*;

    #[tokio::test]
    async fn a_published_version_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default())
            .await
            .unwrap();
        let account = store.add_key("acme", [7; 32]).await.unwrap();
        let agent = store
            .create_agent(NewAgent {
                account_id: account,
                name: "reminders".into(),
                channel: Channel::Voice,
                number: "14155550100".into(),
                region: Region::Us,
                flow: FlowDefinition::default_for(Channel::Voice),
                connection_id: None,
            })
            .await
            .unwrap();
        let version = store
            .publish_agent(account, &agent.agent_id)
            .await
            .unwrap()
            .unwrap();
        let directory = Directory::default();

        let missing = directory
            .agent_version(&store, &agent.agent_id, version + 1)
            .await
            .unwrap();
        assert!(missing.is_none());
        let first = directory
            .agent_version(&store, &agent.agent_id, version)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.version, version);
        let again = directory
            .agent_version(&store, &agent.agent_id, version)
            .await
            .unwrap()
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second read came from the store"
        );
    }
}
