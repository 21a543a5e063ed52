//! Two servers on one PostgreSQL database and one SMSC (CHANNELS §7): each
//! holds its own bind, and a receipt that comes over the other server's
//! bind than the one its message went on still reaches its session.

use serde_json::json;

use crate::helpers::*;
use crate::smpp::OnSmpp;

#[tokio::test]
async fn two_servers_each_bind_and_either_takes_the_receipts() {
    let on = OnSmpp::texting(json!({})).await;
    let config = on.app.config.clone();
    let _second = TestApp::spawn_with(|c| *c = config).await;
    // Both servers bind, on their own.
    on.smsc.wait_for(2, |e| e["event"] == "bound").await;
    on.smsc
        .tell(json!({"cmd": "receipts_on", "where": "other"}))
        .await;
    let people: Vec<String> = (0..4).map(|_| unique_number()).collect();
    let mut ids = vec![];
    for person in &people {
        ids.push(on.text(person, "Hello").await);
    }
    for id in &ids {
        assert_eq!(on.statuses(id, 1).await, ["delivered"]);
    }
    for person in &people {
        assert_eq!(on.submits_to(person).len(), 1, "{person}");
    }
    let receipts = on
        .smsc
        .wait_for(people.len(), |e| e["event"] == "receipt_answered")
        .await;
    assert!(
        receipts
            .iter()
            .all(|r| r["other"] == true && r["command_status"] == 0),
        "{receipts:#?}"
    );
}
