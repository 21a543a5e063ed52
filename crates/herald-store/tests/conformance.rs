//! What every store backend must do, checked against each of them: the
//! same cases run on a fresh SQLite file and on a fresh PostgreSQL schema.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_core::flow::FlowDefinition;
use herald_core::session::SessionParameters;
use herald_core::{AccountId, AgentId, Channel, Region, SessionId};
use herald_store::*;

/// Runs each case once per backend: `sqlite::case` and `postgres::case`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("t.db").display());
                    super::$case(super::open(&url).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let url = herald_store::testing::scratch_postgres_url().await;
                    super::$case(super::open(&url).await).await;
                }
            )*
        }
    };
}

conformance!(
    concurrent_writes_commit_alone_or_fail_alone,
    an_idempotency_key_stores_one_session,
    concurrent_requests_with_one_idempotency_key_store_one_session,
    expired_idempotency_keys_are_purged,
    agents_publish_immutable_versions_and_numbers_are_unique,
    every_cached_change_bumps_its_revision,
    only_the_oldest_pending_callback_of_a_session_is_due,
    a_dispatch_lease_is_exclusive_until_it_runs_out,
    a_lost_lease_refuses_the_old_workers_writes,
    a_settlement_under_a_lost_lease_changes_nothing,
    concurrent_claimers_never_share_a_job,
    finished_sessions_leave_the_queue,
    a_write_whose_caller_stops_waiting_leaves_no_lock_behind,
);

async fn open(url: &str) -> Arc<dyn Store> {
    herald_store::open(url, &StoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e:#}"))
}

async fn agent(store: &dyn Store) -> (AccountId, AgentId) {
    let account = store.add_key("acme", [7; 32]).await.unwrap();
    let agent = store
        .create_agent(NewAgent {
            account_id: account,
            name: "a".into(),
            channel: Channel::Sms,
            number: "447700900001".into(),
            region: Region::Eu,
            flow: FlowDefinition::default_for(Channel::Sms),
        })
        .await
        .unwrap();
    store.publish_agent(account, &agent.agent_id).await.unwrap();
    (account, agent.agent_id)
}

fn session(account: AccountId, agent: &AgentId, id: SessionId) -> NewSession {
    NewSession {
        id,
        account_id: account,
        agent_id: agent.clone(),
        agent_version: 1,
        channel: Channel::Sms,
        to: "447700900123".into(),
        from: "447700900001".into(),
        status_url: None,
        hangup_on_machine: false,
        parameters: SessionParameters::default(),
        whatsapp: None,
        created_at: Utc::now(),
        idempotency: None,
    }
}

fn with_key(mut s: NewSession, key: &str) -> NewSession {
    s.idempotency = Some(NewIdempotency {
        key: key.into(),
        request_hash: [1; 32],
        response: format!("first {}", s.id),
    });
    s
}

async fn count_sessions(store: &dyn Store, account: AccountId) -> usize {
    store
        .sessions(
            account,
            SessionFilter {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .len()
}

const LEASE: Duration = Duration::from_secs(30);

fn later(secs: i64) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(secs)
}

/// Many concurrent inserts; one that fails (a duplicate id) fails alone and
/// the others are stored, each with its dispatch job.
async fn concurrent_writes_commit_alone_or_fail_alone(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let duplicate = SessionId::generate();
    store
        .create_session(session(account, &agent, duplicate))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (store, agent) = (store.clone(), agent.clone());
        let id = if i % 50 == 0 {
            duplicate
        } else {
            SessionId::generate()
        };
        tasks.push(tokio::spawn(async move {
            store.create_session(session(account, &agent, id)).await
        }));
    }
    let (mut stored, mut failed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Created::Stored) => stored += 1,
            Err(StoreError::Internal(_)) => failed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((stored, failed), (196, 4));
    assert_eq!(count_sessions(store.as_ref(), account).await, 197);
    let jobs = store
        .claim_dispatches(Utc::now(), LEASE, 1000)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 197, "every stored session has its dispatch job");
    // Leased jobs are not handed out again until released.
    assert!(store
        .claim_dispatches(Utc::now(), LEASE, 1000)
        .await
        .unwrap()
        .is_empty());
    store.release_dispatches(jobs[..3].to_vec()).await.unwrap();
    assert_eq!(
        store
            .claim_dispatches(Utc::now(), LEASE, 1000)
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn an_idempotency_key_stores_one_session(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let first = SessionId::generate();
    assert_eq!(
        store
            .create_session(with_key(session(account, &agent, first), "k"))
            .await
            .unwrap(),
        Created::Stored
    );
    let again = store
        .create_session(with_key(
            session(account, &agent, SessionId::generate()),
            "k",
        ))
        .await
        .unwrap();
    assert_eq!(
        again,
        Created::Duplicate(IdempotentResponse {
            request_hash: [1; 32],
            response: format!("first {first}"),
        })
    );
    assert_eq!(count_sessions(store.as_ref(), account).await, 1);
}

async fn concurrent_requests_with_one_idempotency_key_store_one_session(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, agent) = (store.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            let s = with_key(session(account, &agent, SessionId::generate()), "same");
            store.create_session(s).await.unwrap()
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored = answers.iter().filter(|a| **a == Created::Stored).count();
    assert_eq!(stored, 1, "{answers:?}");
    // Every duplicate answers with the one stored response.
    let responses: HashSet<_> = answers
        .iter()
        .filter_map(|a| match a {
            Created::Duplicate(r) => Some(r.response.clone()),
            Created::Stored => None,
        })
        .collect();
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(count_sessions(store.as_ref(), account).await, 1);
}

async fn expired_idempotency_keys_are_purged(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    store
        .create_session(with_key(
            session(account, &agent, SessionId::generate()),
            "k",
        ))
        .await
        .unwrap();
    assert_eq!(
        store
            .purge_idempotency(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(store
        .idempotent_response(account, "k", IDEMPOTENCY_WINDOW)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.purge_idempotency(Duration::ZERO).await.unwrap(), 1);
    assert!(store
        .idempotent_response(account, "k", IDEMPOTENCY_WINDOW)
        .await
        .unwrap()
        .is_none());
}

async fn agents_publish_immutable_versions_and_numbers_are_unique(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let taken = store
        .create_agent(NewAgent {
            account_id: account,
            name: "b".into(),
            channel: Channel::Sms,
            number: "447700900001".into(),
            region: Region::Eu,
            flow: FlowDefinition::default_for(Channel::Sms),
        })
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let patched = store
        .update_agent(
            account,
            &agent,
            AgentPatch {
                name: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.name, "renamed");
    assert_eq!(store.publish_agent(account, &agent).await.unwrap(), Some(2));
    let v1 = store.agent_version(&agent, 1).await.unwrap().unwrap();
    let v2 = store.agent_version(&agent, 2).await.unwrap().unwrap();
    assert_eq!((v1.name.as_str(), v2.name.as_str()), ("a", "renamed"));
    let index = store.agent_index().await.unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].published, Some((2, "447700900001".into())));
    assert!(store.delete_agent(account, &agent).await.unwrap());
    assert!(store.agent(account, &agent).await.unwrap().is_none());
    assert!(store.agent_index().await.unwrap().is_empty());
    // A deleted agent's published versions stay for the sessions it started.
    assert!(store.agent_version(&agent, 2).await.unwrap().is_some());
}

async fn every_cached_change_bumps_its_revision(store: Arc<dyn Store>) {
    let before = store.revisions().await.unwrap();
    let (_, agent) = agent(store.as_ref()).await;
    let after_agent = store.revisions().await.unwrap();
    assert!(after_agent.keys > before.keys);
    assert!(after_agent.agents > before.agents);
    assert!(store.set_rate(&agent, 7).await.unwrap());
    let after_rate = store.revisions().await.unwrap();
    assert!(after_rate.limits > after_agent.limits);
    assert_eq!(store.rates().await.unwrap(), vec![(agent, 7)]);
    assert!(store.revoke_key([7; 32]).await.unwrap());
    assert!(store.revisions().await.unwrap().keys > after_rate.keys);
    assert!(store.keys().await.unwrap()[0].revoked);
}

fn callback(account: AccountId, n: u32) -> NewCallback {
    NewCallback {
        dedupe_key: format!("c{n}"),
        webhook_id: format!("msg_{n}"),
        account_id: account,
        url: "https://example.com".into(),
        body: "{}".into(),
        created_at: Utc::now(),
    }
}

async fn started(store: &dyn Store) -> (AccountId, SessionId) {
    let (account, agent) = agent(store).await;
    let id = SessionId::generate();
    store
        .create_session(session(account, &agent, id))
        .await
        .unwrap();
    (account, id)
}

fn delivered(due: &DueCallback) -> Settlement {
    Settlement {
        id: due.id,
        lease: due.lease,
        attempts: due.attempts + 1,
        at: Utc::now(),
        verdict: Verdict::Delivered,
    }
}

async fn only_the_oldest_pending_callback_of_a_session_is_due(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let enqueue = |callbacks| SessionUpdate {
        callbacks,
        ..Default::default()
    };
    store
        .update_session(
            id,
            enqueue(vec![callback(account, 1), callback(account, 2)]),
        )
        .await
        .unwrap();
    // Enqueueing the same callback again changes nothing.
    store
        .update_session(id, enqueue(vec![callback(account, 1)]))
        .await
        .unwrap();
    let due = store.claim_callbacks(Utc::now(), LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].webhook_id, "msg_1");
    // The second is overdue but waits behind the first, whose lease is
    // what comes due next.
    let next = store.next_callback_due().await.unwrap().unwrap();
    assert!(next > later(25), "{next}");
    assert!(store
        .claim_callbacks(Utc::now(), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .settle_callbacks(vec![delivered(&due[0])])
        .await
        .unwrap();
    let due = store.claim_callbacks(Utc::now(), LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].webhook_id, "msg_2");
}

async fn a_dispatch_lease_is_exclusive_until_it_runs_out(store: Arc<dyn Store>) {
    let (_, id) = started(store.as_ref()).await;
    let first = store.claim_dispatches(Utc::now(), LEASE, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].session_id, id);
    assert!(store
        .claim_dispatches(later(29), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    // Renewed, it is still held when the first lease would have run out.
    assert!(store.renew_dispatch(first[0], later(60)).await.unwrap());
    assert!(store
        .claim_dispatches(later(31), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    // Once it runs out, another worker takes it, under a new token.
    let second = store.claim_dispatches(later(61), LEASE, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].session_id, id);
    assert_ne!(second[0].token, first[0].token);
    assert!(!store.renew_dispatch(first[0], later(120)).await.unwrap());
    // The old holder's release leaves the new holder's lease alone.
    store.release_dispatches(vec![first[0]]).await.unwrap();
    assert!(store
        .claim_dispatches(later(62), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    store.release_dispatches(second.clone()).await.unwrap();
    assert_eq!(
        store
            .claim_dispatches(Utc::now(), LEASE, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_lost_lease_refuses_the_old_workers_writes(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let first = store.claim_dispatches(Utc::now(), LEASE, 10).await.unwrap();
    let second = store.claim_dispatches(later(31), LEASE, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    let stale = SessionUpdate {
        status: Some(herald_core::session::SessionStatus::Ended),
        events: vec![NewEvent {
            key: Some("run:1".into()),
            kind: "stale".into(),
            at: Utc::now(),
            data: None,
        }],
        callbacks: vec![callback(account, 1)],
        finish_dispatch: true,
        lease: Some(first[0].token),
        ..Default::default()
    };
    let refused = store.update_session(id, stale).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let session = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(session.status, herald_core::session::SessionStatus::Queued);
    assert!(session.events.iter().all(|e| e.kind != "stale"));
    assert!(store
        .claim_callbacks(Utc::now(), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    // The new holder writes, and finishing removes the job.
    store
        .update_session(
            id,
            SessionUpdate {
                events: vec![NewEvent {
                    key: Some("run:1".into()),
                    kind: "dispatched".into(),
                    at: Utc::now(),
                    data: None,
                }],
                finish_dispatch: true,
                lease: Some(second[0].token),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let session = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(session.events.last().unwrap().kind, "dispatched");
    assert!(!store.renew_dispatch(second[0], later(90)).await.unwrap());
}

async fn a_settlement_under_a_lost_lease_changes_nothing(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    store
        .update_session(
            id,
            SessionUpdate {
                callbacks: vec![callback(account, 1)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = store.claim_callbacks(Utc::now(), LEASE, 10).await.unwrap();
    let second = store.claim_callbacks(later(31), LEASE, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].webhook_id, first[0].webhook_id);
    assert_ne!(second[0].lease, first[0].lease);
    // The first worker gives up on it, too late: nothing is recorded.
    store
        .settle_callbacks(vec![Settlement {
            verdict: Verdict::Failed {
                error: "stale".into(),
            },
            ..delivered(&first[0])
        }])
        .await
        .unwrap();
    let session = store.session(account, id).await.unwrap().unwrap();
    assert!(session.events.iter().all(|e| e.kind != "callback_failed"));
    store
        .release_callbacks(vec![(first[0].id, first[0].lease)])
        .await
        .unwrap();
    assert!(store
        .claim_callbacks(later(32), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    // The holder's own verdict counts.
    store
        .settle_callbacks(vec![Settlement {
            verdict: Verdict::Failed {
                error: "gave up".into(),
            },
            ..delivered(&second[0])
        }])
        .await
        .unwrap();
    let session = store.session(account, id).await.unwrap().unwrap();
    let failed = session
        .events
        .iter()
        .find(|e| e.kind == "callback_failed")
        .expect("the failure is recorded");
    assert_eq!(failed.data.as_ref().unwrap()["webhook_id"], "msg_1");
    assert!(store.next_callback_due().await.unwrap().is_none());
}

/// Workers claiming at the same time never get the same job.
async fn concurrent_claimers_never_share_a_job(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    for _ in 0..200 {
        store
            .create_session(session(account, &agent, SessionId::generate()))
            .await
            .unwrap();
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim_dispatches(Utc::now(), LEASE, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|l| l.session_id));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(distinct.len(), 200);
}

async fn finished_sessions_leave_the_queue(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let lease = store.claim_dispatches(Utc::now(), LEASE, 10).await.unwrap()[0];
    let ended = Utc::now();
    store
        .update_session(
            id,
            SessionUpdate {
                status: Some(herald_core::session::SessionStatus::Ended),
                outcome: Some(herald_core::session::Outcome::Completed),
                ended_at: Some(ended),
                conversation_uuid: Some("CON-x".into()),
                finish_dispatch: true,
                lease: Some(lease.token),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let session = store.session_for_work(id).await.unwrap().unwrap();
    assert_eq!(
        session.outcome,
        Some(herald_core::session::Outcome::Completed)
    );
    assert_eq!(session.conversation_uuid.as_deref(), Some("CON-x"));
    assert_eq!(
        session.ended_at.map(|t| t.timestamp_micros()),
        Some(ended.timestamp_micros())
    );
    assert!(store.session(account, id).await.unwrap().is_some());
    assert!(store
        .claim_dispatches(later(3600), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A caller may stop polling a write at any point (a client hangs up, a
/// worker loses its lease, or the worker is busy renewing that lease). The
/// write must finish all the same: a transaction left half-way would keep
/// the job's row locked, and the renewal after it would wait for ever.
async fn a_write_whose_caller_stops_waiting_leaves_no_lock_behind(store: Arc<dyn Store>) {
    let (_, id) = started(store.as_ref()).await;
    let mut at = 0;
    for patience in 0..120u64 {
        at += 31;
        let lease = claim_soon(store.as_ref(), later(at)).await;
        let write = store.update_session(
            id,
            SessionUpdate {
                events: vec![NewEvent {
                    key: None,
                    kind: "step".into(),
                    at: Utc::now(),
                    data: None,
                }],
                lease: Some(lease.token),
                ..Default::default()
            },
        );
        tokio::pin!(write);
        // Stop polling part-way, a little later each round, but hold on.
        let _ = tokio::time::timeout(Duration::from_micros(20 * patience), &mut write).await;
        let renewed = tokio::time::timeout(
            Duration::from_secs(5),
            store.renew_dispatch(lease, later(at + 1)),
        )
        .await
        .unwrap_or_else(|_| panic!("a renewal waits on a write left half-way (round {patience})"));
        assert!(renewed.unwrap());
    }
}

/// Claims the session's job, waiting out a write still finishing on it.
async fn claim_soon(store: &dyn Store, now: chrono::DateTime<Utc>) -> DispatchLease {
    for _ in 0..100 {
        if let Some(lease) = store.claim_dispatches(now, LEASE, 10).await.unwrap().pop() {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the job is not claimable");
}
