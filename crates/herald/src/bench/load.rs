//! The benchmark's load generator: HTTP/1.1 over kept-alive loopback
//! connections, in two shapes.
//!
//! - Closed loop: N connections, each sending its next request as soon as
//!   the last is answered. It finds the most a server can do, but a slow
//!   answer also holds the next request back, so its latencies flatter.
//! - Open loop: requests leave on a fixed schedule whatever the answers do,
//!   and each latency is counted from when its request was due, so a stall
//!   shows in full (no coordinated omission).
//!
//! hyper's connection-level client keeps the generator's own cost per
//! request small; the same generator measures every scenario, so ratios
//! between them are fair.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One request to send, again and again.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub key: String,
    /// Bodies used in turn (e.g. one per agent).
    pub bodies: Arc<Vec<Bytes>>,
}

impl Target {
    fn request(&self, n: usize) -> Request<Full<Bytes>> {
        Request::post(self.path.as_str())
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("x-vgai-key", &self.key)
            .body(Full::new(self.bodies[n % self.bodies.len()].clone()))
            .expect("a valid request")
    }
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Run {
    /// Latencies in microseconds, sorted.
    pub latencies: Vec<u32>,
    pub elapsed: Duration,
    /// Answers by status code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Requests that got no answer (connection errors).
    pub errors: u64,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies[i]) / 1000.0
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn merge(mut self, other: Part) -> Self {
        self.latencies.extend(other.latencies);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        self
    }
}

#[derive(Default)]
struct Part {
    latencies: Vec<u32>,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: u64,
}

impl Part {
    fn record(&mut self, answer: Result<u16, ()>, took: Duration) {
        match answer {
            Ok(status) => {
                self.latencies
                    .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                *self.statuses.entry(status).or_default() += 1;
            }
            Err(()) => self.errors += 1,
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one request and reads the whole answer; the status, or `Err` if the
/// connection failed.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<u16, ()> {
    sender.ready().await.map_err(drop)?;
    let response = sender.send_request(request).await.map_err(drop)?;
    let status = response.status().as_u16();
    response.into_body().collect().await.map_err(drop)?;
    Ok(status)
}

/// When a closed-loop run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    /// After this many requests in all.
    Count(usize),
}

/// `connections` connections, each sending back to back until `stop`.
pub async fn closed_loop(target: &Target, connections: usize, stop: Stop) -> anyhow::Result<Run> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(target.addr).await?);
    }
    let started = Instant::now();
    let (deadline, limit) = match stop {
        Stop::After(d) => (started + d, usize::MAX),
        Stop::Count(n) => (started + Duration::from_secs(24 * 3600), n),
    };
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let (target, issued) = (target.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Part::default();
            while Instant::now() < deadline {
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                let request = target.request(n);
                let sent = Instant::now();
                let answer = send(&mut sender, request).await;
                part.record(answer, sent.elapsed());
                if answer.is_err() {
                    break;
                }
            }
            part
        }));
    }
    let mut run = Run::default();
    for task in tasks {
        run = run.merge(task.await?);
    }
    run.elapsed = started.elapsed();
    run.latencies.sort_unstable();
    Ok(run)
}

/// `rate` requests a second for `duration`, over up to `connections`
/// connections; a request that finds none free waits for one, and that wait
/// counts in its latency.
pub async fn open_loop(
    target: &Target,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let (free_tx, free_rx) = mpsc::channel(connections);
    for _ in 0..connections {
        free_tx.send(connect(target.addr).await?).await?;
    }
    let free_rx = Arc::new(tokio::sync::Mutex::new(free_rx));
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let (target, free_tx, free_rx) = (target.clone(), free_tx.clone(), free_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Part::default();
            let Some(mut sender) = free_rx.lock().await.recv().await else {
                return part;
            };
            let answer = send(&mut sender, target.request(n)).await;
            part.record(answer, due.elapsed());
            if answer.is_ok() {
                let _ = free_tx.send(sender).await;
            } else if let Ok(fresh) = connect(target.addr).await {
                let _ = free_tx.send(fresh).await;
            }
            part
        }));
    }
    let mut run = Run::default();
    for task in tasks {
        run = run.merge(task.await?);
    }
    run.elapsed = started.elapsed();
    run.latencies.sort_unstable();
    Ok(run)
}

/// One request outside a measurement (setting up, reading metrics): its
/// status and body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("x-vgai-key", key)
        .body(Full::new(body))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
