//! The Redis limiter against a real Redis: `HERALD_TEST_REDIS_URL`, or the
//! one on the default port. Each test keys its logs under a prefix of its
//! own, so tests can run concurrently and again without cleaning up.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_limit::{Decision, Permit, RateLimiter, RedisLimiter, RedisOptions};
use tokio::task::JoinSet;

fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn options() -> RedisOptions {
    RedisOptions {
        key_prefix: format!("herald-test:{:016x}:", rand::random::<u64>()),
        ..RedisOptions::default()
    }
}

async fn limiter_at(url: &str, options: RedisOptions) -> RedisLimiter {
    RedisLimiter::new(url, options)
        .await
        .expect("a well-formed URL")
}

async fn limiter() -> RedisLimiter {
    limiter_at(&redis_url(), options()).await
}

async fn acquire(l: &RedisLimiter, key: &str, rate: u32) -> Decision {
    l.acquire(key, rate).await.expect("Redis answers")
}

async fn admit(l: &RedisLimiter, key: &str, rate: u32) -> Permit {
    match acquire(l, key, rate).await {
        Decision::Admitted(permit) => permit,
        other => panic!("expected admission, got {other:?}"),
    }
}

async fn retry_after(l: &RedisLimiter, key: &str, rate: u32) -> Duration {
    match acquire(l, key, rate).await {
        Decision::Limited { retry_after } => retry_after,
        other => panic!("expected a limit, got {other:?}"),
    }
}

/// A loopback port that nothing listens on, at least for now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_burst_of_n_is_admitted_and_the_next_waits_for_the_window() {
    let l = Arc::new(limiter().await);
    let mut burst = JoinSet::new();
    for _ in 0..5 {
        let l = l.clone();
        burst.spawn(async move { l.acquire("agent", 5).await });
    }
    while let Some(decision) = burst.join_next().await {
        assert!(matches!(decision.unwrap(), Ok(Decision::Admitted(_))));
    }

    let wait = retry_after(&l, "agent", 5).await;
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    admit(&l, "agent", 5).await;
}

#[tokio::test]
async fn the_window_slides_rather_than_resets() {
    let l = limiter().await;
    admit(&l, "agent", 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    admit(&l, "agent", 2).await;
    let wait = retry_after(&l, "agent", 2).await;
    assert!(wait <= Duration::from_millis(400), "{wait:?}");

    // The first has left the window, the second has not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    admit(&l, "agent", 2).await;
    let wait = retry_after(&l, "agent", 2).await;
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_redis_admit_exactly_the_rate_between_them() {
    let shared = options();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Arc::new(limiter_at(&redis_url(), shared.clone()).await));
    }
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for i in 0..60 {
        let server = servers[i % servers.len()].clone();
        requests.spawn(async move { server.acquire("agent", 10).await });
    }
    let mut admitted = 0;
    while let Some(decision) = requests.join_next().await {
        match decision.unwrap().expect("Redis answers") {
            Decision::Admitted(_) => admitted += 1,
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
        }
    }
    // Otherwise the first admissions could have left the window and the
    // count would prove nothing.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn a_released_slot_and_only_that_one_can_be_taken_again() {
    let l = limiter().await;
    let first = admit(&l, "agent", 2).await;
    admit(&l, "agent", 2).await;
    retry_after(&l, "agent", 2).await;

    l.release("agent", first).await;
    admit(&l, "agent", 2).await;
    retry_after(&l, "agent", 2).await;
}

#[tokio::test]
async fn agents_are_limited_separately() {
    let l = limiter().await;
    admit(&l, "a", 1).await;
    admit(&l, "b", 1).await;
    retry_after(&l, "a", 1).await;
}

#[tokio::test]
async fn after_a_rate_cut_the_wait_is_for_the_entry_that_fills_the_log() {
    let l = limiter().await;
    let gap = Duration::from_millis(250);
    admit(&l, "agent", 3).await;
    tokio::time::sleep(gap).await;
    admit(&l, "agent", 3).await;
    tokio::time::sleep(gap).await;
    admit(&l, "agent", 3).await;

    // Three entries, a gap apart. At rate 1 the newest must leave the window,
    // at rate 2 the middle one, at rate 3 the oldest; each check here comes
    // later than the one before, so the waits differ by at least the gap.
    let at_1 = retry_after(&l, "agent", 1).await;
    let at_2 = retry_after(&l, "agent", 2).await;
    let at_3 = retry_after(&l, "agent", 3).await;
    assert!(at_1 <= Duration::from_secs(1), "{at_1:?}");
    assert!(at_1 >= at_2 + gap, "{at_1:?} then {at_2:?}");
    assert!(at_2 >= at_3 + gap, "{at_2:?} then {at_3:?}");
    assert!(at_3 > Duration::ZERO);
}

#[tokio::test]
async fn a_malformed_url_is_refused_at_once() {
    for url in [
        "not a url",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
    ] {
        assert!(RedisLimiter::new(url, options()).await.is_err(), "{url}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_makes_the_limiter_unavailable_not_permissive() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let timeout = Duration::from_millis(300);
    // Constructing does not need Redis.
    let l = limiter_at(
        &url,
        RedisOptions {
            timeout,
            ..options()
        },
    )
    .await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = l
            .acquire("agent", 5)
            .await
            .expect_err("no Redis, no decision");
        assert!(err.0.contains("Redis"), "{err}");
        assert!(started.elapsed() < timeout * 10, "{:?}", started.elapsed());
    }
}

/// A Redis of the test's own, killed when the test ends however it ends.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
    }

    /// Sends a signal by name (`STOP`, `CONT`) to the running server.
    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
        assert!(status.expect("kill is installed").success());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until an acquire is decided: Redis takes a moment to start, and the
/// limiter to reconnect.
async fn first_decision(l: &RedisLimiter, key: &str, rate: u32) -> Decision {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.acquire(key, rate).await {
            Ok(decision) => return decision,
            Err(e) if Instant::now() > deadline => panic!("Redis did not come back: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn the_limiter_recovers_when_redis_comes_back() {
    let mut redis = PrivateRedis::start();
    let l = limiter_at(&redis.url(), options()).await;
    let Decision::Admitted(permit) = first_decision(&l, "agent", 1).await else {
        panic!("a fresh log admits");
    };
    retry_after(&l, "agent", 1).await;

    redis.kill();
    let err = l.acquire("agent", 1).await.expect_err("Redis is gone");
    assert!(err.0.contains("Redis"), "{err}");
    // Giving a slot back to nowhere is only logged.
    l.release("agent", permit).await;

    // The new Redis starts empty, and has never seen the script.
    redis.restart();
    assert!(matches!(
        first_decision(&l, "agent", 1).await,
        Decision::Admitted(_)
    ));
    retry_after(&l, "agent", 1).await;
}

#[tokio::test]
async fn a_redis_that_does_not_answer_times_the_check_out() {
    let redis = PrivateRedis::start();
    let timeout = Duration::from_millis(300);
    let l = limiter_at(
        &redis.url(),
        RedisOptions {
            timeout,
            ..options()
        },
    )
    .await;
    first_decision(&l, "agent", 3).await;

    redis.signal("STOP");
    let started = Instant::now();
    let err = l.acquire("agent", 3).await.expect_err("Redis is stopped");
    let waited = started.elapsed();
    redis.signal("CONT");
    assert!(err.0.contains("Redis"), "{err}");
    assert!(waited >= timeout && waited < timeout * 10, "{waited:?}");

    // The timed-out check may yet have taken its slot once Redis resumed.
    assert!(matches!(
        first_decision(&l, "agent", 3).await,
        Decision::Admitted(_)
    ));
}
