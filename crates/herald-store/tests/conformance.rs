//! What every store backend must do, checked against each of them: the
//! same cases run on a fresh SQLite file and on a fresh PostgreSQL schema.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::flow::FlowDefinition;
use herald_core::session::{Outcome, SessionEvent, SessionInput, SessionStatus};
use herald_core::{AccountId, AgentId, CampaignId, Channel, ConnectionId, Region, SessionId};
use herald_store::testing::new_session as session;
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
    a_sessions_callbacks_come_due_one_after_another,
    a_dispatch_lease_is_exclusive_until_it_runs_out,
    a_lost_lease_refuses_the_old_workers_writes,
    a_settlement_under_a_lost_lease_changes_nothing,
    concurrent_claimers_never_share_a_job,
    finished_sessions_leave_the_queue,
    a_write_whose_caller_stops_waiting_leaves_no_lock_behind,
    inputs_reach_an_open_session_and_wake_it,
    a_session_put_to_sleep_wakes_at_its_time_and_gives_up_its_lease,
    a_sleep_over_an_unhandled_input_leaves_the_job_due,
    a_delivery_racing_a_sleep_is_never_lost,
    flow_state_and_inbound_first_inputs_are_stored,
    an_inbound_message_finds_the_newest_open_session,
    open_sessions_name_their_account_and_agent,
    a_number_is_held_by_a_published_version_and_by_open_sessions,
    claims_pass_over_the_accounts_they_are_told_to,
    connections_belong_to_their_account_and_keep_their_sealed_credentials,
    a_connection_in_use_cannot_be_deleted,
    published_versions_keep_the_connection_they_were_published_on,
    a_report_delivered_twice_is_stored_once,
    providers_ids_find_their_session_and_item,
    a_session_that_ends_waiting_takes_late_reports_until_its_time,
    a_session_s_own_job_is_leased_asleep_or_due_but_never_twice,
    opt_outs_are_per_account_and_channel_and_page_in_order,
    a_campaign_moves_only_from_the_states_it_is_asked_to,
    a_campaign_s_recipients_are_added_once_and_attempted_once,
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
            connection_id: None,
        })
        .await
        .unwrap();
    store.publish_agent(account, &agent.agent_id).await.unwrap();
    (account, agent.agent_id)
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
        .claim_dispatches(Utc::now(), LEASE, 1000, &[])
        .await
        .unwrap();
    assert_eq!(jobs.len(), 197, "every stored session has its dispatch job");
    // Leased jobs are not handed out again until released.
    assert!(store
        .claim_dispatches(Utc::now(), LEASE, 1000, &[])
        .await
        .unwrap()
        .is_empty());
    store.release_dispatches(jobs[..3].to_vec()).await.unwrap();
    assert_eq!(
        store
            .claim_dispatches(Utc::now(), LEASE, 1000, &[])
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
            connection_id: None,
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
    let before = store.revisions().await.unwrap();
    let c = store
        .create_connection(new_connection(after_agent_account(&store).await))
        .await
        .unwrap();
    let after_create = store.revisions().await.unwrap();
    assert!(after_create.connections > before.connections);
    let patch = ConnectionPatch {
        name: Some("renamed".into()),
        ..Default::default()
    };
    store
        .update_connection(c.account_id, &c.id, patch)
        .await
        .unwrap();
    let after_update = store.revisions().await.unwrap();
    assert!(after_update.connections > after_create.connections);
    assert!(store.delete_connection(c.account_id, &c.id).await.unwrap());
    assert!(store.revisions().await.unwrap().connections > after_update.connections);
}

async fn after_agent_account(store: &Arc<dyn Store>) -> AccountId {
    store.accounts().await.unwrap()[0].id
}

fn new_connection(account: AccountId) -> NewConnection {
    let mut settings = serde_json::Map::new();
    settings.insert("language".into(), "en-GB".into());
    NewConnection {
        id: ConnectionId::generate(),
        account_id: account,
        name: "Vonage".into(),
        provider: "vonage".into(),
        settings,
        sealed: vec![0, 1, 2, 255],
    }
}

/// A connection is its account's alone; its sealed credentials come back
/// byte for byte; an edit changes what it names and no more; a deleted one
/// leaves the account's list but is still found for the work under way.
async fn connections_belong_to_their_account_and_keep_their_sealed_credentials(
    store: Arc<dyn Store>,
) {
    let a = store.add_key("acme", [7; 32]).await.unwrap();
    let b = store.add_key("globex", [8; 32]).await.unwrap();
    let first = store.create_connection(new_connection(a)).await.unwrap();
    assert_eq!(first.sealed, vec![0, 1, 2, 255]);
    assert_eq!(first.provider, "vonage");
    assert_eq!(first.settings["language"], "en-GB");
    assert!(!first.deleted);
    let second = store.create_connection(new_connection(a)).await.unwrap();
    let ids = |list: Vec<ConnectionRecord>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.connections(a).await.unwrap()),
        vec![first.id.clone(), second.id.clone()]
    );
    assert!(store.connections(b).await.unwrap().is_empty());
    assert!(store.connection(b, &first.id).await.unwrap().is_none());
    let patch = || ConnectionPatch {
        sealed: Some(vec![9; 40]),
        ..Default::default()
    };
    assert!(store
        .update_connection(b, &first.id, patch())
        .await
        .unwrap()
        .is_none());
    assert!(!store.delete_connection(b, &first.id).await.unwrap());
    let edited = store
        .update_connection(a, &first.id, patch())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(edited.sealed, vec![9; 40]);
    assert_eq!(edited.name, "Vonage");
    assert_eq!(edited.settings, first.settings);
    assert!(edited.updated_at >= first.updated_at);
    assert_eq!(edited.created_at, first.created_at);

    assert!(store.delete_connection(a, &first.id).await.unwrap());
    assert!(!store.delete_connection(a, &first.id).await.unwrap());
    assert_eq!(ids(store.connections(a).await.unwrap()), vec![second.id]);
    assert!(store.connection(a, &first.id).await.unwrap().is_none());
    let kept = store.connection_for_work(&first.id).await.unwrap().unwrap();
    assert!(kept.deleted);
    assert_eq!(kept.sealed, vec![9; 40]);
    assert_eq!(store.all_connections().await.unwrap().len(), 2);
    assert!(store
        .connection_for_work(&ConnectionId::generate())
        .await
        .unwrap()
        .is_none());
}

/// An agent whose draft or published version runs on a connection holds
/// it; an agent of another account cannot be put on it, nor any agent on a
/// deleted one.
async fn a_connection_in_use_cannot_be_deleted(store: Arc<dyn Store>) {
    let a = store.add_key("acme", [7; 32]).await.unwrap();
    let b = store.add_key("globex", [8; 32]).await.unwrap();
    let c = store.create_connection(new_connection(a)).await.unwrap();
    let on_it = NewAgent {
        connection_id: Some(c.id.clone()),
        ..new_agent(a, "447700900001")
    };
    assert!(is_conflict(
        store
            .create_agent(NewAgent {
                account_id: b,
                ..on_it.clone()
            })
            .await
    ));
    let agent = store.create_agent(on_it).await.unwrap();
    assert_eq!(agent.connection_id.as_ref(), Some(&c.id));
    let refused = store.delete_connection(a, &c.id).await;
    match refused {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains(agent.agent_id.as_str()), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Published on it, then the draft moved off: the version still holds it.
    store.publish_agent(a, &agent.agent_id).await.unwrap();
    let off = AgentPatch {
        connection_id: Some(None),
        ..Default::default()
    };
    let moved = store
        .update_agent(a, &agent.agent_id, off.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.connection_id, None);
    assert!(is_conflict(store.delete_connection(a, &c.id).await));
    // Published off it: free.
    store.publish_agent(a, &agent.agent_id).await.unwrap();
    assert!(store.delete_connection(a, &c.id).await.unwrap());
    let back = AgentPatch {
        connection_id: Some(Some(c.id.clone())),
        ..Default::default()
    };
    assert!(is_conflict(
        store.update_agent(a, &agent.agent_id, back).await
    ));
    // A deleted agent holds nothing.
    let d = store.create_connection(new_connection(a)).await.unwrap();
    let other = store
        .create_agent(NewAgent {
            connection_id: Some(d.id.clone()),
            ..new_agent(a, "447700900002")
        })
        .await
        .unwrap();
    assert!(store.delete_agent(a, &other.agent_id).await.unwrap());
    assert!(store.delete_connection(a, &d.id).await.unwrap());
}

async fn published_versions_keep_the_connection_they_were_published_on(store: Arc<dyn Store>) {
    let a = store.add_key("acme", [7; 32]).await.unwrap();
    let c = store.create_connection(new_connection(a)).await.unwrap();
    let agent = store
        .create_agent(new_agent(a, "447700900001"))
        .await
        .unwrap();
    assert_eq!(agent.connection_id, None);
    store.publish_agent(a, &agent.agent_id).await.unwrap();
    let on = AgentPatch {
        connection_id: Some(Some(c.id.clone())),
        ..Default::default()
    };
    store
        .update_agent(a, &agent.agent_id, on)
        .await
        .unwrap()
        .unwrap();
    store.publish_agent(a, &agent.agent_id).await.unwrap();
    let v1 = store
        .agent_version(&agent.agent_id, 1)
        .await
        .unwrap()
        .unwrap();
    let v2 = store
        .agent_version(&agent.agent_id, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1.connection_id, None);
    assert_eq!(v2.connection_id, Some(c.id));
}

/// An event that stands for any step's: the flow entered node `name`.
fn node(name: &str) -> SessionEvent {
    SessionEvent::NodeEntered { node: name.into() }
}

/// The job's fate when the session ends now.
fn ended_now() -> JobFate {
    JobFate::Finish(Some(Ending {
        outcome: herald_core::session::Outcome::Completed,
        at: Utc::now(),
    }))
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
    let lease = claim_now(store.as_ref()).await[0].token;
    let enqueue = |callbacks| SessionUpdate {
        callbacks,
        ..SessionUpdate::keep(lease)
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

/// Through every way a callback stops blocking the next: delivered, given
/// up, its lease given back or run out, and retried (which does not).
async fn a_sessions_callbacks_come_due_one_after_another(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0].token;
    let enqueue = |n| SessionUpdate {
        callbacks: vec![callback(account, n)],
        ..SessionUpdate::keep(lease)
    };
    // Written one by one, each while the earlier ones are pending.
    for n in 1..=4 {
        store.update_session(id, enqueue(n)).await.unwrap();
    }
    let claim = |at| {
        let store = store.clone();
        async move { store.claim_callbacks(at, LEASE, 10).await.unwrap() }
    };
    let only = |due: Vec<DueCallback>, webhook_id: &str| {
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].webhook_id, webhook_id);
        due.into_iter().next().unwrap()
    };
    let first = only(claim(Utc::now()).await, "msg_1");
    // Given up: the next one is due.
    let gave_up = Settlement {
        verdict: Verdict::Failed {
            error: "gave up".into(),
        },
        ..delivered(&first)
    };
    store.settle_callbacks(vec![gave_up]).await.unwrap();
    let second = only(claim(Utc::now()).await, "msg_2");
    // Retried: it stays first in line, due at its retry.
    let retry_at = later(100);
    let retry = Settlement {
        verdict: Verdict::Retry {
            next_at: retry_at,
            error: "503".into(),
        },
        ..delivered(&second)
    };
    store.settle_callbacks(vec![retry]).await.unwrap();
    assert!(claim(Utc::now()).await.is_empty());
    let next = store.next_callback_due().await.unwrap().unwrap();
    assert!(
        (next - retry_at).num_milliseconds().abs() < 1,
        "{next} {retry_at}"
    );
    let second = only(claim(later(101)).await, "msg_2");
    // Its lease given back, it is due again at once.
    store
        .release_callbacks(vec![(second.id, second.lease)])
        .await
        .unwrap();
    let second = only(claim(later(101)).await, "msg_2");
    store
        .settle_callbacks(vec![delivered(&second)])
        .await
        .unwrap();
    // A lease that runs out makes it due again, for another sender.
    let third = only(claim(Utc::now()).await, "msg_3");
    assert!(claim(later(29)).await.is_empty());
    let third_again = only(claim(later(31)).await, "msg_3");
    assert_ne!(third.lease, third_again.lease);
    // The first sender's settlement is refused; the next is not released.
    store
        .settle_callbacks(vec![delivered(&third)])
        .await
        .unwrap();
    assert!(claim(later(32)).await.is_empty());
    store
        .settle_callbacks(vec![delivered(&third_again)])
        .await
        .unwrap();
    let fourth = only(claim(later(32)).await, "msg_4");
    store
        .settle_callbacks(vec![delivered(&fourth)])
        .await
        .unwrap();
    assert!(claim(later(3600)).await.is_empty());
    assert_eq!(store.next_callback_due().await.unwrap(), None);
}

async fn a_dispatch_lease_is_exclusive_until_it_runs_out(store: Arc<dyn Store>) {
    let (_, id) = started(store.as_ref()).await;
    let first = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].session_id, id);
    assert!(store
        .claim_dispatches(later(29), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    // Renewed, it is still held when the first lease would have run out.
    assert!(store.renew_dispatch(first[0], later(60)).await.unwrap());
    assert!(store
        .claim_dispatches(later(31), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    // Once it runs out, another worker takes it, under a new token.
    let second = store
        .claim_dispatches(later(61), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].session_id, id);
    assert_ne!(second[0].token, first[0].token);
    assert!(!store.renew_dispatch(first[0], later(120)).await.unwrap());
    // The old holder's release leaves the new holder's lease alone.
    store.release_dispatches(vec![first[0]]).await.unwrap();
    assert!(store
        .claim_dispatches(later(62), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    store.release_dispatches(second.clone()).await.unwrap();
    assert_eq!(
        store
            .claim_dispatches(Utc::now(), LEASE, 10, &[])
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_session_s_own_job_is_leased_asleep_or_due_but_never_twice(store: Arc<dyn Store>) {
    let (_, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0];
    store
        .update_session(id, sleep(lease, None, later(600)))
        .await
        .unwrap();
    // Asleep, it is leased all the same; the claim is not an attempt (the
    // sleep set them back to none).
    let own = store
        .claim_session(id, Utc::now(), LEASE)
        .await
        .unwrap()
        .expect("a sleeping job is leased");
    assert_eq!(own.attempts, 0);
    assert!(store
        .claim_session(id, later(29), LEASE)
        .await
        .unwrap()
        .is_none());
    // Held so (and renewed), no claimer takes it, even once it is due.
    assert!(store.renew_dispatch(own, later(700)).await.unwrap());
    assert!(store
        .claim_dispatches(later(601), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    store.release_dispatches(vec![own]).await.unwrap();
    // A session with no job (over, or unknown) has nothing to lease.
    let elsewhere = store
        .claim_session(SessionId::generate(), Utc::now(), LEASE)
        .await
        .unwrap();
    assert!(elsewhere.is_none());
    let again = store
        .claim_session(id, Utc::now(), LEASE)
        .await
        .unwrap()
        .unwrap();
    store
        .update_session(
            id,
            SessionUpdate {
                job: ended_now(),
                ..SessionUpdate::keep(again.token)
            },
        )
        .await
        .unwrap();
    assert!(store
        .claim_session(id, later(60), LEASE)
        .await
        .unwrap()
        .is_none());
}

async fn a_lost_lease_refuses_the_old_workers_writes(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let first = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[])
        .await
        .unwrap();
    let second = store
        .claim_dispatches(later(31), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    let stale = SessionUpdate {
        events: vec![NewEvent {
            key: Some("run:1".into()),
            event: node("stale"),
            at: Utc::now(),
        }],
        callbacks: vec![callback(account, 1)],
        job: ended_now(),
        ..SessionUpdate::keep(first[0].token)
    };
    let refused = store.update_session(id, stale).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let session = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(session.status, herald_core::session::SessionStatus::Queued);
    assert!(session
        .events
        .iter()
        .all(|e| e.event().unwrap() != node("stale")));
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
                    event: SessionEvent::Dispatched,
                    at: Utc::now(),
                }],
                job: JobFate::Finish(None),
                ..SessionUpdate::keep(second[0].token)
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
    let lease = claim_now(store.as_ref()).await[0].token;
    store
        .update_session(
            id,
            SessionUpdate {
                callbacks: vec![callback(account, 1)],
                ..SessionUpdate::keep(lease)
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
                let got = store
                    .claim_dispatches(Utc::now(), LEASE, 7, &[])
                    .await
                    .unwrap();
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
    let lease = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[])
        .await
        .unwrap()[0];
    let ended = Utc::now();
    store
        .update_session(
            id,
            SessionUpdate {
                activate: Some(Activation {
                    conversation_uuid: Some("CON-x".into()),
                }),
                job: JobFate::Finish(Some(Ending {
                    outcome: herald_core::session::Outcome::Completed,
                    at: ended,
                })),
                ..SessionUpdate::keep(lease.token)
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
        .claim_dispatches(later(3600), LEASE, 10, &[])
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
                    event: node("step"),
                    at: Utc::now(),
                }],
                ..SessionUpdate::keep(lease.token)
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
        if let Some(lease) = store
            .claim_dispatches(now, LEASE, 10, &[])
            .await
            .unwrap()
            .pop()
        {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the job is not claimable");
}

// ---- conversations that wait ------------------------------------------------

/// An input made now, to the microsecond (as the store keeps times).
fn input(text: &str) -> NewInput {
    NewInput {
        input: SessionInput::Text(text.into()),
        at: herald_core::time::from_micros(Utc::now().timestamp_micros()),
        dedupe: None,
    }
}

async fn claim_now(store: &dyn Store) -> Vec<DispatchLease> {
    store
        .claim_dispatches(Utc::now(), LEASE, 10, &[])
        .await
        .unwrap()
}

/// The update a worker makes when its session waits for the person.
fn sleep(
    lease: DispatchLease,
    consumed: Option<i64>,
    wake_at: chrono::DateTime<Utc>,
) -> SessionUpdate {
    SessionUpdate {
        inputs_consumed: consumed,
        job: JobFate::SleepUntil(wake_at),
        ..SessionUpdate::keep(lease.token)
    }
}

async fn inputs_reach_an_open_session_and_wake_it(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0];
    // Delivered while a worker holds the job: stored, and the lease is left
    // to its holder.
    let one = input("one");
    let first = store.deliver_input(id, one.clone()).await.unwrap().unwrap();
    assert!(claim_now(store.as_ref()).await.is_empty());
    assert!(store.renew_dispatch(lease, later(30)).await.unwrap());
    // The worker handles it and waits an hour for the next.
    store
        .update_session(id, sleep(lease, Some(first), later(3600)))
        .await
        .unwrap();
    assert!(store
        .claim_dispatches(later(60), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    // The person answers: the sleeping job is due at once.
    let (two, three) = (input("two"), input("three"));
    let second = store.deliver_input(id, two.clone()).await.unwrap().unwrap();
    let third = store
        .deliver_input(id, three.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(first < second && second < third, "{first} {second} {third}");
    // Another session's inputs stay its own.
    let other = SessionId::generate();
    let agent = store.agents(account).await.unwrap()[0].agent_id.clone();
    store
        .create_session(session(account, &agent, other))
        .await
        .unwrap();
    store
        .deliver_input(other, input("else"))
        .await
        .unwrap()
        .unwrap();
    let woken = claim_now(store.as_ref()).await;
    let mine: Vec<_> = woken.iter().filter(|l| l.session_id == id).collect();
    assert_eq!(mine.len(), 1, "{woken:?}");
    let row = |id, i: &NewInput| InputRow {
        id,
        input: i.input.clone(),
        at: i.at,
    };
    assert_eq!(
        store.pending_inputs(id, 0).await.unwrap(),
        vec![row(first, &one), row(second, &two), row(third, &three)]
    );
    assert_eq!(
        store.pending_inputs(id, first).await.unwrap(),
        vec![row(second, &two), row(third, &three)]
    );
    assert!(store.pending_inputs(id, third).await.unwrap().is_empty());
    // Once the session is over, an input is refused and nothing is stored.
    store
        .update_session(
            id,
            SessionUpdate {
                job: ended_now(),
                ..SessionUpdate::keep(mine[0].token)
            },
        )
        .await
        .unwrap();
    assert_eq!(store.deliver_input(id, input("late")).await.unwrap(), None);
    assert!(store.pending_inputs(id, third).await.unwrap().is_empty());
    assert!(store
        .claim_dispatches(later(7200), LEASE, 10, &[])
        .await
        .unwrap()
        .iter()
        .all(|l| l.session_id != id));
}

async fn a_session_put_to_sleep_wakes_at_its_time_and_gives_up_its_lease(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0];
    store
        .update_session(
            id,
            SessionUpdate {
                events: vec![NewEvent {
                    key: Some("asked".into()),
                    event: node("asked"),
                    at: Utc::now(),
                }],
                ..sleep(lease, None, later(600))
            },
        )
        .await
        .unwrap();
    // Asleep until its time, lease or no lease.
    assert!(claim_now(store.as_ref()).await.is_empty());
    assert!(store
        .claim_dispatches(later(590), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    // The lease is given up: the old token holds nothing any more.
    assert!(!store.renew_dispatch(lease, later(60)).await.unwrap());
    let refused = store
        .update_session(
            id,
            SessionUpdate {
                job: ended_now(),
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let refused = store.update_session(id, sleep(lease, None, later(5))).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let session = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(session.status, herald_core::session::SessionStatus::Queued);
    assert!(session
        .events
        .iter()
        .any(|e| e.event().unwrap() == node("asked")));
    // At its time it is taken up again, under a new token.
    let woken = store
        .claim_dispatches(later(601), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].session_id, id);
    assert_ne!(woken[0].token, lease.token);
    assert!(store.renew_dispatch(woken[0], later(700)).await.unwrap());
}

async fn a_sleep_over_an_unhandled_input_leaves_the_job_due(store: Arc<dyn Store>) {
    let (_, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0];
    let a = store.deliver_input(id, input("a")).await.unwrap().unwrap();
    let b = store.deliver_input(id, input("b")).await.unwrap().unwrap();
    // The worker read only `a`: `b` is waiting, so the job stays due.
    store
        .update_session(id, sleep(lease, Some(a), later(3600)))
        .await
        .unwrap();
    let again = claim_now(store.as_ref()).await;
    assert_eq!(again.len(), 1, "the job went to sleep over input {b}");
    assert_ne!(again[0].token, lease.token);
    // The lease was given up all the same.
    let refused = store
        .update_session(id, sleep(lease, Some(b), later(3600)))
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    // Everything handled: it sleeps.
    store
        .update_session(id, sleep(again[0], Some(b), later(3600)))
        .await
        .unwrap();
    assert!(claim_now(store.as_ref()).await.is_empty());
    // The stored mark counts when an update gives none.
    let woken = store
        .claim_dispatches(later(3601), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(woken.len(), 1);
    store
        .update_session(id, sleep(woken[0], None, later(7200)))
        .await
        .unwrap();
    assert!(store
        .claim_dispatches(later(3602), LEASE, 10, &[])
        .await
        .unwrap()
        .is_empty());
    // The first input of an inbound session is unhandled until marked so.
    let (account, agent) = {
        let account = store.accounts().await.unwrap()[0].id;
        (
            account,
            store.agents(account).await.unwrap()[0].agent_id.clone(),
        )
    };
    let inbound = SessionId::generate();
    store
        .create_session(NewSession {
            inbound: true,
            first_input: Some(input("hi")),
            ..session(account, &agent, inbound)
        })
        .await
        .unwrap();
    let lease = store
        .claim_dispatches(later(3603), LEASE, 10, &[])
        .await
        .unwrap();
    assert_eq!(lease.len(), 1);
    assert_eq!(lease[0].session_id, inbound);
    store
        .update_session(inbound, sleep(lease[0], None, later(3600)))
        .await
        .unwrap();
    assert_eq!(claim_now(store.as_ref()).await.len(), 1);
}

/// A worker puts its session to sleep while the person's answer arrives. The
/// worker read the inputs before the answer, so its mark is below it; the
/// two writes race. Whichever lands first, the job must end up due at once:
/// otherwise the answer waits for the timer (an hour here, or for ever).
async fn a_delivery_racing_a_sleep_is_never_lost(store: Arc<dyn Store>) {
    const SESSIONS: usize = 4;
    const ROUNDS: usize = 60;
    let (account, agent) = agent(store.as_ref()).await;
    for _ in 0..SESSIONS {
        store
            .create_session(session(account, &agent, SessionId::generate()))
            .await
            .unwrap();
    }
    let mut leases = claim_now(store.as_ref()).await;
    assert_eq!(leases.len(), SESSIONS);
    let mut marks = vec![0; SESSIONS];
    for round in 0..ROUNDS {
        // Every session's pair starts together, so that the two overlap in
        // the database (and the sessions' pairs with each other).
        let start = Arc::new(tokio::sync::Barrier::new(2 * SESSIONS));
        let mut races = Vec::new();
        for (lease, mark) in leases.iter().zip(&marks) {
            let (id, lease, mark) = (lease.session_id, *lease, *mark);
            let deliver = tokio::spawn({
                let (store, start) = (store.clone(), start.clone());
                async move {
                    start.wait().await;
                    let text = format!("answer {round}");
                    store.deliver_input(id, input(&text)).await
                }
            });
            let wait = tokio::spawn({
                let (store, start) = (store.clone(), start.clone());
                async move {
                    start.wait().await;
                    store
                        .update_session(id, sleep(lease, Some(mark), later(3600)))
                        .await
                }
            });
            races.push((id, mark, deliver, wait));
        }
        let mut delivered = Vec::new();
        for (id, mark, deliver, wait) in races {
            let input = deliver
                .await
                .unwrap()
                .unwrap()
                .expect("the session is open");
            wait.await.unwrap().unwrap();
            assert!(input > mark);
            delivered.push((id, input));
        }
        // An input above each stored mark exists, so every job is due.
        let claimed = store
            .claim_dispatches(Utc::now(), LEASE, 2 * SESSIONS, &[])
            .await
            .unwrap();
        for (id, input) in &delivered {
            assert!(
                claimed.iter().any(|l| l.session_id == *id),
                "round {round}: session {id} went to sleep over input {input}"
            );
        }
        assert_eq!(claimed.len(), SESSIONS);
        leases = delivered
            .iter()
            .map(|(id, _)| *claimed.iter().find(|l| l.session_id == *id).unwrap())
            .collect();
        for (i, (id, input)) in delivered.iter().enumerate() {
            let pending = store.pending_inputs(*id, marks[i]).await.unwrap();
            assert_eq!(
                pending.iter().map(|p| p.id).collect::<Vec<_>>(),
                vec![*input],
                "round {round}"
            );
            marks[i] = *input;
        }
    }
}

async fn flow_state_and_inbound_first_inputs_are_stored(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let fresh = store.session_for_work(id).await.unwrap().unwrap();
    assert!(!fresh.inbound);
    assert_eq!(fresh.flow_state, None);
    assert!(store.pending_inputs(id, 0).await.unwrap().is_empty());
    let lease = claim_now(store.as_ref()).await[0];
    let state = serde_json::json!({"node": "ask_name", "vars": {"n": 1, "s": "é\u{0}\""}});
    store
        .update_session(
            id,
            SessionUpdate {
                flow_state: Some(state.clone()),
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .session_for_work(id)
            .await
            .unwrap()
            .unwrap()
            .flow_state,
        Some(state.clone())
    );
    assert_eq!(
        store
            .session(account, id)
            .await
            .unwrap()
            .unwrap()
            .flow_state,
        Some(state.clone())
    );
    // An update without a state keeps the stored one; a new one replaces it.
    store
        .update_session(
            id,
            SessionUpdate {
                activate: Some(Activation {
                    conversation_uuid: None,
                }),
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .session_for_work(id)
            .await
            .unwrap()
            .unwrap()
            .flow_state,
        Some(state)
    );
    let next = serde_json::json!(["done"]);
    store
        .update_session(
            id,
            SessionUpdate {
                flow_state: Some(next.clone()),
                ..sleep(lease, None, later(60))
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .session_for_work(id)
            .await
            .unwrap()
            .unwrap()
            .flow_state,
        Some(next)
    );

    // An inbound session: its first message is its first input, and its
    // job is due at once.
    let agent = store.agents(account).await.unwrap()[0].agent_id.clone();
    let inbound = SessionId::generate();
    let hello = input("hello");
    store
        .create_session(NewSession {
            inbound: true,
            first_input: Some(hello.clone()),
            ..session(account, &agent, inbound)
        })
        .await
        .unwrap();
    let record = store.session_for_work(inbound).await.unwrap().unwrap();
    assert!(record.inbound);
    assert_eq!(record.flow_state, None);
    assert!(
        store
            .session(account, inbound)
            .await
            .unwrap()
            .unwrap()
            .inbound
    );
    let listed = store
        .sessions(
            account,
            SessionFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| (s.id, s.inbound)).collect::<Vec<_>>(),
        vec![(inbound, true), (id, false)]
    );
    let pending = store.pending_inputs(inbound, 0).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (&pending[0].input, pending[0].at),
        (&SessionInput::Text("hello".into()), hello.at)
    );
    assert!(store
        .pending_inputs(inbound, pending[0].id)
        .await
        .unwrap()
        .is_empty());
    let due = claim_now(store.as_ref()).await;
    assert_eq!(
        due.iter().map(|l| l.session_id).collect::<Vec<_>>(),
        vec![inbound]
    );
}

async fn an_inbound_message_finds_the_newest_open_session(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let (person, number) = ("447700900123", "447700900001");
    let create = |channel: Channel, to: &str| {
        let (store, agent) = (store.clone(), agent.clone());
        let to = to.to_owned();
        async move {
            let id = SessionId::generate();
            store
                .create_session(NewSession {
                    channel,
                    to,
                    ..session(account, &agent, id)
                })
                .await
                .unwrap();
            id
        }
    };
    // A worker's leases on the sessions' jobs, claimed as they come.
    let leases = std::sync::Mutex::new(std::collections::HashMap::new());
    let lease_of = |id: SessionId| {
        let store = store.clone();
        let leases = &leases;
        async move {
            for lease in claim_now(store.as_ref()).await {
                leases.lock().unwrap().insert(lease.session_id, lease.token);
            }
            leases.lock().unwrap()[&id]
        }
    };
    let end = |id: SessionId| {
        let store = store.clone();
        async move {
            let lease = lease_of(id).await;
            store
                .update_session(
                    id,
                    SessionUpdate {
                        job: ended_now(),
                        ..SessionUpdate::keep(lease)
                    },
                )
                .await
                .unwrap();
        }
    };
    assert!(store
        .open_sessions(Channel::Sms, person, number)
        .await
        .unwrap()
        .is_empty());
    let older = create(Channel::Sms, person).await;
    let newer = create(Channel::Sms, person).await;
    let whatsapp = create(Channel::Whatsapp, person).await;
    let someone_else = create(Channel::Sms, "447700900999").await;
    // An ended session, newer than all: never the answer.
    let ended = create(Channel::Sms, person).await;
    end(ended).await;
    let open = |channel, to: &'static str, from: &'static str| {
        let store = store.clone();
        async move {
            // The newest first.
            let open = store.open_sessions(channel, to, from).await.unwrap();
            open.first().map(|s| s.id)
        }
    };
    assert_eq!(open(Channel::Sms, person, number).await, Some(newer));
    assert_eq!(
        open(Channel::Whatsapp, person, number).await,
        Some(whatsapp)
    );
    assert_eq!(open(Channel::Voice, person, number).await, None);
    assert_eq!(
        open(Channel::Sms, "447700900999", number).await,
        Some(someone_else)
    );
    assert_eq!(open(Channel::Sms, person, "447700900002").await, None);
    // An active session is open too; once it ends, the older one answers.
    store
        .update_session(
            newer,
            SessionUpdate {
                activate: Some(Activation {
                    conversation_uuid: None,
                }),
                ..SessionUpdate::keep(lease_of(newer).await)
            },
        )
        .await
        .unwrap();
    assert_eq!(open(Channel::Sms, person, number).await, Some(newer));
    end(newer).await;
    assert_eq!(open(Channel::Sms, person, number).await, Some(older));
    end(older).await;
    assert_eq!(open(Channel::Sms, person, number).await, None);
    assert_eq!(
        open(Channel::Whatsapp, person, number).await,
        Some(whatsapp)
    );
}

/// Each open session comes with its account and agent, so that a reply can
/// be routed to one its sender may reach.
async fn open_sessions_name_their_account_and_agent(store: Arc<dyn Store>) {
    let (account, agent) = agent(store.as_ref()).await;
    let id = SessionId::generate();
    store
        .create_session(session(account, &agent, id))
        .await
        .unwrap();
    let open = store
        .open_sessions(Channel::Sms, "447700900123", "447700900001")
        .await
        .unwrap();
    assert_eq!(
        open,
        [OpenSession {
            id,
            account_id: account,
            agent_id: agent,
        }]
    );
}

fn new_agent(account: AccountId, number: &str) -> NewAgent {
    NewAgent {
        account_id: account,
        name: "a".into(),
        channel: Channel::Sms,
        number: number.into(),
        region: Region::Eu,
        flow: FlowDefinition::default_for(Channel::Sms),
        connection_id: None,
    }
}

fn is_conflict<T: std::fmt::Debug>(result: Result<T>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

/// A number stays with its agent while the agent's published version or
/// any open session of the agent uses it, whatever the agent's draft says
/// and whether or not the agent is deleted; then another may take it.
async fn a_number_is_held_by_a_published_version_and_by_open_sessions(store: Arc<dyn Store>) {
    let (a, held) = agent(store.as_ref()).await;
    let b = store.add_key("globex", [8; 32]).await.unwrap();
    let number = "447700900001";
    let id = SessionId::generate();
    store.create_session(session(a, &held, id)).await.unwrap();
    let patch = |n: &str| AgentPatch {
        number: Some(n.into()),
        ..Default::default()
    };
    store
        .update_agent(a, &held, patch("447700900002"))
        .await
        .unwrap()
        .unwrap();
    // The draft moved; the published version still has the number.
    assert!(is_conflict(store.create_agent(new_agent(b, number)).await));
    let other = store
        .create_agent(new_agent(b, "447700900003"))
        .await
        .unwrap();
    assert!(is_conflict(
        store.update_agent(b, &other.agent_id, patch(number)).await
    ));
    // Published elsewhere, then deleted: the open session still has it.
    store.publish_agent(a, &held).await.unwrap();
    store.delete_agent(a, &held).await.unwrap();
    assert!(is_conflict(store.create_agent(new_agent(b, number)).await));
    // Once the session ends, another agent may take the number.
    let lease = claim_now(store.as_ref()).await[0].token;
    store
        .update_session(
            id,
            SessionUpdate {
                job: ended_now(),
                ..SessionUpdate::keep(lease)
            },
        )
        .await
        .unwrap();
    let taken = store.create_agent(new_agent(b, number)).await.unwrap();
    assert_eq!(
        store.publish_agent(b, &taken.agent_id).await.unwrap(),
        Some(1)
    );
    // Other channels and regions have numbers of their own.
    let mut voice = new_agent(a, number);
    voice.channel = Channel::Voice;
    store.create_agent(voice).await.unwrap();
    let mut us = new_agent(a, number);
    us.region = Region::Us;
    store.create_agent(us).await.unwrap();
}

/// Jobs of the accounts a claimer names are left for later; each lease
/// names its session's account.
async fn claims_pass_over_the_accounts_they_are_told_to(store: Arc<dyn Store>) {
    let (a, agent_a) = agent(store.as_ref()).await;
    let b = store.add_key("globex", [8; 32]).await.unwrap();
    let agent_b = store
        .create_agent(new_agent(b, "447700900002"))
        .await
        .unwrap()
        .agent_id;
    let mut of_a = HashSet::new();
    for _ in 0..3 {
        let id = SessionId::generate();
        store
            .create_session(session(a, &agent_a, id))
            .await
            .unwrap();
        of_a.insert(id);
    }
    let of_b = SessionId::generate();
    store
        .create_session(session(b, &agent_b, of_b))
        .await
        .unwrap();
    let claimed = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[a])
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|l| (l.session_id, l.account_id))
            .collect::<Vec<_>>(),
        [(of_b, b)]
    );
    let claimed = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[b])
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|l| l.session_id).collect::<HashSet<_>>(),
        of_a
    );
    assert!(claimed.iter().all(|l| l.account_id == a));
}

// ---- upgrades ----------------------------------------------------------------

/// A session as the previous schema stored it, with its dispatch job.
struct OldSession {
    account: AccountId,
    id: SessionId,
}

impl OldSession {
    fn new() -> Self {
        OldSession {
            account: 1,
            id: SessionId::generate(),
        }
    }

    const INSERT_SESSION: &'static str = "INSERT INTO sessions (id, account_id, agent_id, \
        agent_version, channel, to_addr, from_number, status, hangup_on_machine, parameters, \
        created_at) VALUES ($1, $2, '0123456789abcdef01234567', 1, 'sms', '447700900123', \
        '447700900001', 'queued', FALSE, '[]', 1700000000000000)";
    const INSERT_JOB: &'static str =
        "INSERT INTO dispatch_jobs (session_id, run_at) VALUES ($1, 1700000000000000)";

    /// What the upgraded store must make of it.
    async fn check(&self, store: &dyn Store) {
        let s = store.session(self.account, self.id).await.unwrap().unwrap();
        assert!(!s.inbound);
        assert_eq!(s.flow_state, None);
        assert_eq!(s.status, herald_core::session::SessionStatus::Queued);
        let s = store.session_for_work(self.id).await.unwrap().unwrap();
        assert!(!s.inbound);
        assert_eq!(s.flow_state, None);
        let open = store
            .open_sessions(Channel::Sms, "447700900123", "447700900001")
            .await
            .unwrap();
        assert_eq!(open.iter().map(|s| s.id).collect::<Vec<_>>(), [self.id]);
        assert_eq!(open[0].account_id, self.account);
        // It takes inputs, and its job is due for them.
        let lease = claim_now(store).await;
        assert_eq!(lease.len(), 1);
        // The job learnt its session's account in the upgrade.
        assert_eq!(lease[0].account_id, self.account);
        let first = store
            .deliver_input(self.id, input("hello"))
            .await
            .unwrap()
            .unwrap();
        store
            .update_session(self.id, sleep(lease[0], None, later(3600)))
            .await
            .unwrap();
        assert_eq!(claim_now(store).await.len(), 1);
        assert_eq!(store.pending_inputs(self.id, 0).await.unwrap()[0].id, first);
    }
}

/// A SQLite database made by the previous release (schema version 2) opens,
/// upgrades, and keeps its sessions.
#[tokio::test]
async fn a_sqlite_database_of_the_previous_schema_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old = OldSession::new();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../migrations/sqlite/0002_lease_tokens.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        let sql = OldSession::INSERT_SESSION.replace('$', "?");
        conn.execute(&sql, rusqlite::params![old.id.to_string(), old.account])
            .unwrap();
        conn.execute(
            &OldSession::INSERT_JOB.replace('$', "?"),
            [old.id.to_string()],
        )
        .unwrap();
    }
    let store = open(&format!("sqlite://{}", path.display())).await;
    old.check(store.as_ref()).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 9);
}

/// A PostgreSQL schema made by the previous release (version 1) opens,
/// upgrades, and keeps its sessions.
#[tokio::test]
async fn a_postgres_schema_of_the_previous_version_upgrades() {
    use sqlx::Connection;
    let url = herald_store::testing::scratch_postgres_url().await;
    let old = OldSession::new();
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        // As the previous release's migrate() left it.
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::raw_sql(include_str!("../migrations/postgres/0001_init.sql"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(OldSession::INSERT_SESSION)
            .bind(old.id.to_string())
            .bind(old.account)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(OldSession::INSERT_JOB)
            .bind(old.id.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = open(&url).await;
    old.check(store.as_ref()).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

// ---- what providers report ----------------------------------------------------

fn report(message: u32, status: herald_core::session::MessageStatus, key: &str) -> NewInput {
    NewInput {
        input: SessionInput::MessageStatus {
            message,
            status,
            reason: None,
        },
        at: herald_core::time::from_micros(Utc::now().timestamp_micros()),
        dedupe: Some(key.into()),
    }
}

/// A provider sends a report again (it did not see our answer): the second
/// delivery is the first input, and nothing more is stored.
async fn a_report_delivered_twice_is_stored_once(store: Arc<dyn Store>) {
    use herald_core::session::MessageStatus;
    let (account, id) = started(store.as_ref()).await;
    let delivered = report(0, MessageStatus::Delivered, "m-1:delivered");
    let first = store
        .deliver_input(id, delivered.clone())
        .await
        .unwrap()
        .unwrap();
    let again = store
        .deliver_input(id, delivered.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first);
    let read = store
        .deliver_input(id, report(0, MessageStatus::Read, "m-1:read"))
        .await
        .unwrap()
        .unwrap();
    assert!(read > first);
    // Keys are a session's own: another session may have the same.
    let agent = store.agents(account).await.unwrap()[0].agent_id.clone();
    let other = SessionId::generate();
    store
        .create_session(session(account, &agent, other))
        .await
        .unwrap();
    assert!(store
        .deliver_input(other, delivered.clone())
        .await
        .unwrap()
        .is_some());
    // Inputs without a key are never taken for one another.
    let a = store
        .deliver_input(id, input("same"))
        .await
        .unwrap()
        .unwrap();
    let b = store
        .deliver_input(id, input("same"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a, b);
    let kinds: Vec<_> = store
        .pending_inputs(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.input)
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}

async fn providers_ids_find_their_session_and_item(store: Arc<dyn Store>) {
    let (account, id) = started(store.as_ref()).await;
    let connection = store
        .create_connection(new_connection(account))
        .await
        .unwrap()
        .id;
    let lease = claim_now(store.as_ref()).await[0];
    let reference = |provider_ref: &str, item: &str| ProviderRef {
        connection_id: connection.clone(),
        provider_ref: provider_ref.into(),
        session_id: id,
        item: item.into(),
    };
    store
        .update_session(
            id,
            SessionUpdate {
                provider_refs: vec![reference("uuid-0", "0"), reference("uuid-1", "1")],
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    // Written again (a step run twice): kept as it was.
    store
        .update_session(
            id,
            SessionUpdate {
                provider_refs: vec![reference("uuid-1", "1")],
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.provider_ref(&connection, "uuid-1").await.unwrap(),
        Some(reference("uuid-1", "1"))
    );
    assert_eq!(
        store
            .provider_ref(&ConnectionId::generate(), "uuid-1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.provider_ref(&connection, "uuid-9").await.unwrap(),
        None
    );
    assert_eq!(
        store.session_provider_refs(id).await.unwrap(),
        vec![reference("uuid-0", "0"), reference("uuid-1", "1")]
    );
    // Under a lease no longer held, nothing is written.
    store
        .update_session(id, sleep(lease, None, later(60)))
        .await
        .unwrap();
    let stale = store
        .update_session(
            id,
            SessionUpdate {
                provider_refs: vec![reference("uuid-2", "2")],
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost)), "{stale:?}");
    assert_eq!(
        store.provider_ref(&connection, "uuid-2").await.unwrap(),
        None
    );
}

/// A session may end while its messages still wait for statuses: it is
/// over (ended, its outcome set, no longer open to the person), and its job
/// sleeps on, woken by what the provider reports, until it is let go.
async fn a_session_that_ends_waiting_takes_late_reports_until_its_time(store: Arc<dyn Store>) {
    use herald_core::session::MessageStatus;
    let (account, id) = started(store.as_ref()).await;
    let lease = claim_now(store.as_ref()).await[0];
    store
        .update_session(
            id,
            SessionUpdate {
                job: JobFate::EndAndWait {
                    ending: Ending {
                        outcome: Outcome::Completed,
                        at: Utc::now(),
                    },
                    until: later(3600),
                },
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    let ended = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(ended.status, SessionStatus::Ended);
    assert_eq!(ended.outcome, Some(Outcome::Completed));
    assert!(ended.ended_at.is_some());
    let agent = store.agents(account).await.unwrap()[0].clone();
    assert!(store
        .open_sessions(agent.channel, "447700900123", &agent.number)
        .await
        .unwrap()
        .is_empty());
    // Asleep: not due until a report comes.
    assert!(claim_now(store.as_ref()).await.is_empty());
    let read = store
        .deliver_input(id, report(0, MessageStatus::Read, "m:read"))
        .await
        .unwrap()
        .unwrap();
    let woken = claim_now(store.as_ref()).await;
    assert_eq!(woken.len(), 1);
    assert_eq!(store.pending_inputs(id, 0).await.unwrap()[0].id, read);
    // Let go: the job goes, and a later report is refused.
    store
        .update_session(
            id,
            SessionUpdate {
                inputs_consumed: Some(read),
                job: JobFate::Finish(None),
                ..SessionUpdate::keep(woken[0].token)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .deliver_input(id, report(0, MessageStatus::Failed, "m:failed"))
            .await
            .unwrap(),
        None
    );
    let after = store.session(account, id).await.unwrap().unwrap();
    assert_eq!(after.outcome, Some(Outcome::Completed));
}

/// An opt-out holds for its account and channel alone; a second one of the
/// same recipient keeps the first; pages run in channel and recipient
/// order, of one channel when asked.
async fn opt_outs_are_per_account_and_channel_and_page_in_order(store: Arc<dyn Store>) {
    let acme = store.add_key("acme", [7; 32]).await.unwrap();
    let globex = store.add_key("globex", [8; 32]).await.unwrap();
    let session = SessionId::generate();
    let opt_out = |channel: Channel, to: &str, source: &str| OptOut {
        channel,
        to: to.into(),
        source: source.into(),
        session_id: (source == "keyword").then_some(session),
        created_at: Utc::now(),
    };
    for (channel, to) in [
        (Channel::Sms, "447700900003"),
        (Channel::Sms, "447700900001"),
        (Channel::Whatsapp, "447700900002"),
        (Channel::Voice, "447700900001"),
    ] {
        assert!(store
            .add_opt_out(acme, opt_out(channel, to, "keyword"))
            .await
            .unwrap());
    }
    assert!(!store
        .add_opt_out(acme, opt_out(Channel::Sms, "447700900001", "api"))
        .await
        .unwrap());
    assert!(store
        .opt_out(acme, Channel::Sms, "447700900001")
        .await
        .unwrap()
        .is_some());
    assert!(store
        .opt_out(acme, Channel::Whatsapp, "447700900001")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .opt_out(globex, Channel::Sms, "447700900001")
        .await
        .unwrap()
        .is_none());

    let all = store.opt_outs(acme, None, None, 10).await.unwrap();
    let listed: Vec<(Channel, &str)> = all.iter().map(|o| (o.channel, o.to.as_str())).collect();
    assert_eq!(
        listed,
        [
            (Channel::Sms, "447700900001"),
            (Channel::Sms, "447700900003"),
            (Channel::Voice, "447700900001"),
            (Channel::Whatsapp, "447700900002"),
        ]
    );
    assert_eq!(all[0].source, "keyword", "the first one stays");
    assert_eq!(all[0].session_id, Some(session));
    let after = OptOutCursor {
        channel: Channel::Sms,
        to: "447700900003".into(),
    };
    let page = store.opt_outs(acme, None, Some(after), 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].channel, Channel::Voice);
    let sms = store
        .opt_outs(acme, Some(Channel::Sms), None, 10)
        .await
        .unwrap();
    assert_eq!(sms.len(), 2);
    assert!(store
        .opt_outs(globex, None, None, 10)
        .await
        .unwrap()
        .is_empty());

    assert!(store
        .remove_opt_out(acme, Channel::Sms, "447700900001")
        .await
        .unwrap());
    assert!(!store
        .remove_opt_out(acme, Channel::Sms, "447700900001")
        .await
        .unwrap());
    assert!(store
        .opt_out(acme, Channel::Sms, "447700900001")
        .await
        .unwrap()
        .is_none());
}

async fn new_campaign(store: &dyn Store) -> (AccountId, AgentId, CampaignRecord) {
    let (account, agent) = agent(store).await;
    let campaign = store
        .create_campaign(NewCampaign {
            id: CampaignId::generate(),
            account_id: account,
            name: "reminders".into(),
            agent_id: agent.clone(),
            status_url: Some("https://example.com/status".into()),
            settings: serde_json::json!({"pace": {"per_second": 5}}),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    (account, agent, campaign)
}

fn recipient(to: &str, id: Option<&str>) -> NewRecipient {
    NewRecipient {
        to: to.into(),
        external_id: id.map(str::to_owned),
        timezone: Some("Europe/London".into()),
        zone_source: "number".into(),
        parameters: herald_core::session::SessionParameters::from_json(
            &serde_json::json!([{"name": "NAME", "value": "Ada"}]),
        )
        .unwrap(),
    }
}

fn attempt_of(account: AccountId, agent: &AgentId, campaign: &CampaignId, to: &str) -> NewSession {
    let mut s = session(account, agent, SessionId::generate());
    s.to = to.into();
    s.campaign_id = Some(campaign.clone());
    s
}

/// A campaign starts in `draft`, is its account's alone, and moves only
/// from the states a change names; its first start and its end are dated,
/// and only a scheduled or running one is live.
async fn a_campaign_moves_only_from_the_states_it_is_asked_to(store: Arc<dyn Store>) {
    let (account, _, campaign) = new_campaign(store.as_ref()).await;
    assert_eq!(campaign.state, CampaignState::Draft);
    assert_eq!(campaign.settings["pace"]["per_second"], 5);
    assert!(store
        .campaign(account + 1, &campaign.id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.campaigns(account).await.unwrap(),
        std::slice::from_ref(&campaign)
    );
    assert!(store.live_campaigns().await.unwrap().is_empty());
    let id = &campaign.id;
    let now = Utc::now();
    let running = store
        .set_campaign_state(
            account,
            id,
            &[CampaignState::Draft],
            CampaignState::Running,
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.state, CampaignState::Running);
    assert_eq!(
        running.started_at.map(|t| t.timestamp_micros()),
        Some(now.timestamp_micros())
    );
    assert_eq!(store.live_campaigns().await.unwrap().len(), 1);
    assert!(store
        .set_campaign_state(
            account,
            id,
            &[CampaignState::Draft],
            CampaignState::Running,
            now
        )
        .await
        .unwrap()
        .is_none());
    let paused = store
        .set_campaign_state(
            account,
            id,
            &[CampaignState::Running],
            CampaignState::Paused,
            later(1),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.live_campaigns().await.unwrap().len(),
        1,
        "paused is live"
    );
    let resumed = store
        .set_campaign_state(
            account,
            id,
            &[CampaignState::Paused],
            CampaignState::Running,
            later(2),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resumed.started_at, running.started_at,
        "the first start stays"
    );
    assert_eq!(paused.ended_at, None);
    let cancelled = store
        .set_campaign_state(
            account,
            id,
            &[CampaignState::Running, CampaignState::Paused],
            CampaignState::Cancelled,
            later(3),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(cancelled.ended_at.is_some());
    assert!(
        store.live_campaigns().await.unwrap().is_empty(),
        "cancelled with nothing under way"
    );
    assert!(store
        .set_campaign_state(
            account + 1,
            id,
            &[CampaignState::Cancelled],
            CampaignState::Running,
            now
        )
        .await
        .unwrap()
        .is_none());
}

/// Recipients are numbered in the order added and refused when their `to`
/// or id is taken; an addition past the cap stores nothing. Each attempt's
/// session is made once, however many servers try at once; an ended
/// attempt is settled once; a change applies only in the state it was
/// decided in; the counts say where everyone is.
async fn a_campaign_s_recipients_are_added_once_and_attempted_once(store: Arc<dyn Store>) {
    let (account, agent, campaign) = new_campaign(store.as_ref()).await;
    let id = &campaign.id;
    assert!(!store.has_open_recipients(id).await.unwrap(), "nobody yet");
    let added = store
        .add_recipients(
            id,
            vec![
                recipient("447700900001", Some("a1")),
                recipient("447700900002", Some("b1")),
                recipient("447700900001", None),
                recipient("447700900003", Some("a1")),
            ],
            3,
        )
        .await
        .unwrap();
    assert_eq!(added.accepted, 2);
    assert_eq!(
        added.refused,
        [
            (2, RecipientRefusal::DuplicateTo),
            (3, RecipientRefusal::DuplicateId)
        ]
    );
    let over = store
        .add_recipients(
            id,
            vec![
                recipient("447700900004", None),
                recipient("447700900005", None),
            ],
            3,
        )
        .await;
    assert!(matches!(over, Err(StoreError::Conflict(_))), "{over:?}");
    let read = store.campaign(account, id).await.unwrap().unwrap();
    assert_eq!(read.recipients, 2, "nothing of a refused addition is kept");

    let due = store.due_recipients(id, Utc::now(), 10).await.unwrap();
    assert_eq!(due.iter().map(|r| r.n).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(due[0].to, "447700900001");
    assert_eq!(due[0].external_id.as_deref(), Some("a1"));
    assert_eq!(due[0].state, RecipientState::Pending);
    assert_eq!(due[0].parameters, recipient("x", None).parameters);

    let first = attempt_of(account, &agent, id, "447700900001");
    let first_id = first.id;
    assert!(store.start_attempt(id, 0, 0, first).await.unwrap());
    assert!(!store
        .start_attempt(id, 0, 0, attempt_of(account, &agent, id, "447700900001"))
        .await
        .unwrap());
    // Servers racing for one recipient: one session.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, agent, id) = (store.clone(), agent.clone(), id.clone());
            tokio::spawn(async move {
                let attempt = attempt_of(account, &agent, &id, "447700900002");
                store.start_attempt(&id, 1, 0, attempt).await.unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += usize::from(racer.await.unwrap());
    }
    assert_eq!(won, 1);
    let filter = SessionFilter {
        campaign_id: Some(id.clone()),
        limit: 10,
        ..Default::default()
    };
    let sessions = store.sessions(account, filter).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.campaign_id.as_ref() == Some(id)));
    assert_eq!(store.recipients_in_progress(id).await.unwrap(), 2);
    assert!(store
        .due_recipients(id, Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.ended_attempts(id, 10).await.unwrap().is_empty());

    // The first attempt's session ends busy.
    let lease = store
        .claim_dispatches(Utc::now(), LEASE, 10, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.session_id == first_id)
        .unwrap();
    store
        .update_session(
            first_id,
            SessionUpdate {
                job: JobFate::Finish(Some(Ending {
                    outcome: Outcome::Busy,
                    at: Utc::now(),
                })),
                ..SessionUpdate::keep(lease.token)
            },
        )
        .await
        .unwrap();
    let ended = store.ended_attempts(id, 10).await.unwrap();
    assert_eq!(
        ended,
        [EndedAttempt {
            n: 0,
            session_id: first_id,
            attempts: 1,
            outcome: Outcome::Busy
        }]
    );
    let retry = RecipientChange {
        state: RecipientState::Waiting,
        next_at: Some(later(60)),
        last_outcome: Some(Outcome::Busy),
        skip_reason: None,
    };
    assert!(store
        .settle_attempt(id, 0, first_id, retry.clone())
        .await
        .unwrap());
    assert!(!store.settle_attempt(id, 0, first_id, retry).await.unwrap());
    assert!(store
        .due_recipients(id, Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    let waiting = store.due_recipients(id, later(120), 10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].n, waiting[0].attempts), (0, 1));
    assert_eq!(waiting[0].last_outcome, Some(Outcome::Busy));

    let skip = RecipientChange {
        state: RecipientState::Skipped,
        next_at: None,
        last_outcome: None,
        skip_reason: Some("opted_out".into()),
    };
    assert!(
        !store.defer_recipient(id, 0, 0, skip.clone()).await.unwrap(),
        "a stale count"
    );
    assert!(
        !store.defer_recipient(id, 1, 0, skip.clone()).await.unwrap(),
        "in progress"
    );
    assert!(store.defer_recipient(id, 0, 1, skip).await.unwrap());

    let counts = store.recipient_counts(id).await.unwrap();
    let mut by_state = counts.by_state.clone();
    by_state.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        by_state,
        [
            (RecipientState::InProgress, 1),
            (RecipientState::Skipped, 1)
        ]
    );
    assert_eq!(counts.by_outcome, [(Outcome::Busy, 1)]);
    assert_eq!(counts.by_skip_reason, [("opted_out".to_owned(), 1)]);
    assert_eq!(counts.attempts, 2);
    let skipped = store
        .recipients(id, Some(RecipientState::Skipped), None, 10)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].skip_reason.as_deref(), Some("opted_out"));
    let after_first = store.recipients(id, None, Some(0), 10).await.unwrap();
    assert_eq!(after_first.iter().map(|r| r.n).collect::<Vec<_>>(), [1]);
    assert!(after_first[0].session_id.is_some());

    let last = store
        .add_recipients(id, vec![recipient("447700900009", None)], 3)
        .await
        .unwrap();
    assert_eq!(last.accepted, 1);
    assert_eq!(
        store
            .close_recipients(id, RecipientState::Cancelled, None)
            .await
            .unwrap(),
        1
    );
    let cancelled = store
        .recipients(id, Some(RecipientState::Cancelled), None, 10)
        .await
        .unwrap();
    assert_eq!(cancelled[0].n, 2);
    assert!(
        store.has_open_recipients(id).await.unwrap(),
        "one under way"
    );
    let second = store.recipients(id, None, Some(0), 1).await.unwrap()[0].clone();
    let done = RecipientChange {
        state: RecipientState::Completed,
        next_at: None,
        last_outcome: Some(Outcome::Completed),
        skip_reason: None,
    };
    assert!(store
        .settle_attempt(id, 1, second.session_id.unwrap(), done)
        .await
        .unwrap());
    assert!(!store.has_open_recipients(id).await.unwrap(), "all done");
}
