//! Meta's throughput level of each phone number, for the pace (`[shaping]`).
//!
//! The pace step reports a phone number the pacer sees for the first time
//! ([`crate::policy::ThroughputReads::want`], a non-blocking `try_send` into a bounded queue;
//! a full queue drops it, counted). One task then, off the hot path:
//!
//! - **reads** the number's level with `health.access_token`:
//!   `GET /{version}/{phone-number-id}?fields=throughput`, at most [`READS_IN_FLIGHT`] at
//!   once, and hands it to the pacer ([`crate::policy::pace::Pacer::set_level`]).
//!   `STANDARD` is 80/s, `HIGH` 1 000/s; a level not documented (or none in the answer) keeps
//!   what is known. A failed read is asked again after a backoff
//!   ([`crate::common::backoff::backoff_delay`], from a few seconds doubling to an hour);
//!   meanwhile the number is paced at `shaping.throughput`.
//! - **shares discovery's read**: a number whose WABA is not known is read by discovery
//!   (`fields=health_status,throughput`, one request for both), which reports the level
//!   here ([`Levels::learned`]); this task reads such a number itself only if discovery has
//!   not answered within [`DEFER`].
//! - remembers each number's level (bounded, [`Levels`]'s cap: the pacer's tracked numbers),
//!   so a number the pacer dropped and sees again is not read again.
//! - on a signed `phone_number_quality_update` `THROUGHPUT_UPGRADE` (which names only the
//!   `display_phone_number`), maps the display number to its id as learned from `messages`
//!   webhooks' `metadata` ([`Levels::seen`]; bounded, in memory only — a restart learns it
//!   again from the next `messages` webhook) and reads that number's level again; without a
//!   token it sets it to `HIGH` directly (Meta's event says it was upgraded). An upgrade of a
//!   display number not learned yet is counted (`upgrade_unknown_number`) and logged once at
//!   debug.
//!
//! Without `health.access_token` nothing is read here (discovery's read with the caller's
//! token, `discovery.use_caller_token`, still reports the level of the numbers it reads).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::mpsc;

use super::health;
use crate::circuit::Table;
use crate::common::backoff::backoff_delay;
use crate::config::{Config, Secret};
use crate::graph::throughput::{self as graph_tput, Level, Read};
use crate::graph::{envelope, GraphId};
use crate::metrics::METRICS;
use crate::policy::pair::digits;
use crate::policy::Policy;
use crate::upstream::{HttpClient, Target};

/// Reports queued for the task; past it, reports are dropped (sends never wait).
const QUEUE: usize = 1024;
/// Level reads in flight at once.
pub const READS_IN_FLIGHT: usize = 4;
/// How long a number discovery is about to read (its WABA unknown) waits for discovery's
/// combined read before this task reads it itself.
pub const DEFER: Duration = Duration::from_secs(2);
/// Longest wait before a failed read is asked again.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The first retry's backoff step ([`backoff_delay`]'s attempt): ~3 s, doubling.
const FIRST_RETRY_ATTEMPT: u32 = 6;
/// Display numbers logged once when an upgrade named them before any `messages` webhook.
const UNKNOWN_LOGGED: usize = 1024;

enum Msg {
    /// New to the pacer.
    Want(GraphId),
    /// Discovery's combined read answered.
    Learned(GraphId, Read),
    /// Meta announced an upgrade of the number.
    Upgrade(GraphId),
}

/// What the display numbers map to (learned from `messages` webhooks).
struct Displays {
    ids: HashMap<u64, GraphId>,
    unknown_logged: HashSet<u64>,
}

/// The handle on the level task: the pace step's reports, discovery's answers and the
/// webhook receiver's (cheap to clone).
#[derive(Clone)]
pub struct Levels {
    tx: mpsc::Sender<Msg>,
    displays: Arc<Mutex<Displays>>,
    cap: usize,
}

/// The task's end of [`Levels`], started by [`start`].
pub struct Receiver(mpsc::Receiver<Msg>);

/// A level handle and the receiver its task reads (`None` with `shaping.mode = "off"`).
pub fn channel(cfg: &Config) -> Option<(Levels, Receiver)> {
    if cfg.shaping.mode == crate::policy::pace::ShapingMode::Off {
        return None;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    Some((
        Levels {
            tx,
            displays: Arc::new(Mutex::new(Displays {
                ids: HashMap::new(),
                unknown_logged: HashSet::new(),
            })),
            cap: crate::policy::pace::Settings::default().max_numbers,
        },
        Receiver(rx),
    ))
}

/// The token level reads use: `health.access_token`, when set.
pub fn token(cfg: &Config) -> Option<Secret> {
    cfg.health
        .access_token
        .clone()
        .filter(|t| !t.expose().is_empty())
}

impl crate::policy::ThroughputReads for Levels {
    fn want(&self, phone: GraphId) {
        self.send(Msg::Want(phone));
    }
}

impl Levels {
    fn send(&self, m: Msg) {
        if self.tx.try_send(m).is_err() {
            METRICS
                .throughput_reads
                .with_label_values(&["dropped"])
                .inc();
        }
    }

    /// Discovery read `phone` with `fields=health_status,throughput`: its level.
    pub fn learned(&self, phone: GraphId, read: Read) {
        self.send(Msg::Learned(phone, read));
    }

    /// A `messages` webhook's metadata: `display` is the number `id`.
    pub fn seen(&self, display: &str, id: &str) {
        let (Some(d), Some(id)) = (digits(display), GraphId::new(id)) else {
            return;
        };
        let mut g = match self.displays.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.ids.get(&d) == Some(&id) {
            return;
        }
        if g.ids.len() >= self.cap && !g.ids.contains_key(&d) {
            // Rare (more business numbers than the pacer tracks): start over; the next
            // `messages` webhook of each number teaches it again.
            g.ids.clear();
        }
        g.ids.insert(d, id);
    }

    /// A signed `THROUGHPUT_UPGRADE` for `display`: its number's level is read again (set
    /// to `HIGH` without a token). False when the display number is not known yet.
    pub fn upgraded(&self, display: &str) -> bool {
        let Some(d) = digits(display) else {
            return false;
        };
        let id = {
            let mut g = match self.displays.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match g.ids.get(&d).copied() {
                Some(id) => id,
                None => {
                    if g.unknown_logged.len() < UNKNOWN_LOGGED && g.unknown_logged.insert(d) {
                        tracing::debug!(display_phone_number = %d, "THROUGHPUT_UPGRADE for a display number no messages webhook named yet: its phone-number id is not known, nothing changes (counted as upgrade_unknown_number)");
                    }
                    drop(g);
                    METRICS
                        .throughput_reads
                        .with_label_values(&["upgrade_unknown_number"])
                        .inc();
                    return false;
                }
            }
        };
        METRICS
            .throughput_reads
            .with_label_values(&["upgrade"])
            .inc();
        tracing::info!(phone_number_id = %id, "THROUGHPUT_UPGRADE: Meta raised the phone number's throughput; its level is read again");
        self.send(Msg::Upgrade(id));
        true
    }
}

/// Starts the level task: reads with `token` when one is set. `discovery` says discovery
/// reads numbers of unknown WABA (and reports their level).
pub fn start(cfg: &Config, target: &Target, policy: Arc<Policy>, rx: Receiver, discovery: bool) {
    let token = token(cfg);
    if token.is_some() {
        tracing::info!(
            reads_in_flight = READS_IN_FLIGHT,
            "shaping: Meta's throughput level of each phone number is read once (GET /{{phone-number-id}}?fields=throughput) and again on THROUGHPUT_UPGRADE"
        );
    }
    let task = Task {
        table: policy.table().clone(),
        policy,
        reader: Arc::new(Reader {
            client: target.client(),
            base: format!("{}/{}/", target.base_url(), cfg.graph_version),
            timeout: cfg.health.timeout,
        }),
        token,
        discovery,
        state: HashMap::new(),
        queue: VecDeque::new(),
        timers: BinaryHeap::new(),
        running: 0,
        cap: crate::policy::pace::Settings::default().max_numbers,
    };
    tokio::spawn(task.run(rx.0));
}

/// What the task knows of one number.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Its level.
    Known(Level),
    /// Read, but no level known here.
    Unknown,
    /// Waiting for discovery's combined read (until its timer).
    Deferred,
    /// Waiting for a read slot.
    Queued,
    /// A read is running; `again`: an upgrade came meanwhile, read once more after it.
    Running { again: bool },
    /// The last `failures` reads failed; asked again at its timer.
    Failed { failures: u32 },
}

struct Task {
    policy: Arc<Policy>,
    table: Arc<Table>,
    reader: Arc<Reader>,
    token: Option<Secret>,
    discovery: bool,
    state: HashMap<GraphId, State>,
    queue: VecDeque<GraphId>,
    timers: BinaryHeap<Reverse<(Instant, GraphId)>>,
    running: usize,
    /// Numbers remembered at once (the pacer's cap).
    cap: usize,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let (done_tx, mut done) = mpsc::unbounded_channel::<(GraphId, Result<Read, Failed>)>();
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.on(m),
                    None => return,
                },
                Some((phone, r)) = done.recv() => {
                    self.running -= 1;
                    self.finished(phone, r);
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some(Reverse((at, phone))) = self.timers.peek().copied() {
                        if at > now {
                            break;
                        }
                        self.timers.pop();
                        if matches!(self.state.get(&phone), Some(State::Deferred | State::Failed { .. })) {
                            self.enqueue(phone);
                        }
                    }
                }
            }
            self.pump(&done_tx);
        }
    }

    fn on(&mut self, m: Msg) {
        let now = Instant::now();
        match m {
            Msg::Want(phone) => match self.state.get(&phone).copied() {
                Some(State::Known(l)) => {
                    self.policy.pacer().set_level(&phone, Some(l), now);
                }
                Some(State::Unknown | State::Failed { .. }) => {
                    self.policy.pacer().set_level(&phone, None, now);
                }
                Some(State::Deferred | State::Queued | State::Running { .. }) => {}
                None if self.token.is_none() => {}
                None => {
                    if !self.room() {
                        self.policy.pacer().set_level(&phone, None, now);
                        return;
                    }
                    if self.discovery && self.table.resolve(&phone).is_none() {
                        self.state.insert(phone, State::Deferred);
                        self.timers.push(Reverse((now + DEFER, phone)));
                    } else {
                        self.enqueue(phone);
                    }
                }
            },
            Msg::Learned(phone, read) => {
                match self.state.get(&phone).copied() {
                    // Our own read answers too; it stands.
                    Some(State::Running { .. }) => {}
                    None if !self.room() => {}
                    _ => self.answered(phone, read),
                }
            }
            Msg::Upgrade(phone) => {
                // Meta's event says the number was upgraded: HIGH at once; with a token the
                // level is read again too (Meta's answer is what stands).
                self.policy
                    .pacer()
                    .set_level(&phone, Some(Level::High), now);
                if !self.state.contains_key(&phone) && !self.room() {
                    return;
                }
                if self.token.is_none() {
                    self.state.insert(phone, State::Known(Level::High));
                    return;
                }
                match self.state.get_mut(&phone) {
                    Some(State::Running { again }) => *again = true,
                    Some(State::Queued) => {}
                    _ => self.enqueue(phone),
                }
            }
        }
    }

    /// Room for one more number: past the cap, what is only remembered goes (levels
    /// known and failed numbers), never a read waiting or running.
    fn room(&mut self) -> bool {
        if self.state.len() < self.cap {
            return true;
        }
        self.state
            .retain(|_, s| matches!(s, State::Deferred | State::Queued | State::Running { .. }));
        if self.state.len() < self.cap {
            return true;
        }
        METRICS
            .throughput_reads
            .with_label_values(&["dropped"])
            .inc();
        false
    }

    fn enqueue(&mut self, phone: GraphId) {
        self.state.insert(phone, State::Queued);
        self.queue.push_back(phone);
    }

    fn pump(&mut self, done: &mpsc::UnboundedSender<(GraphId, Result<Read, Failed>)>) {
        let Some(token) = &self.token else {
            self.queue.clear();
            return;
        };
        while self.running < READS_IN_FLIGHT {
            let Some(phone) = self.queue.pop_front() else {
                return;
            };
            if self.state.get(&phone) != Some(&State::Queued) {
                continue;
            }
            self.state.insert(phone, State::Running { again: false });
            self.running += 1;
            let reader = self.reader.clone();
            let token = token.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let r = reader.read(&phone, &token).await;
                drop(token);
                let _ = done.send((phone, r));
            });
        }
    }

    fn finished(&mut self, phone: GraphId, r: Result<Read, Failed>) {
        let again = matches!(self.state.get(&phone), Some(State::Running { again: true }));
        match r {
            Ok(read) => self.answered(phone, read),
            Err(f) => {
                let failures = match self.state.get(&phone) {
                    Some(State::Failed { failures }) => *failures,
                    _ => 0,
                }
                .saturating_add(1);
                let (label, why) = match f {
                    Failed::Auth(w) => ("auth_error", w),
                    Failed::Other(w) => ("error", w),
                };
                METRICS.throughput_reads.with_label_values(&[label]).inc();
                let wait = backoff_delay(failures + FIRST_RETRY_ATTEMPT - 1, MAX_BACKOFF);
                // One line per failed attempt; errors never carry the token.
                tracing::info!(phone_number_id = %phone, result = label, error = %why, retry_in_s = wait.as_secs(), "could not read the phone number's throughput level: paced at shaping.throughput meanwhile");
                // A level the pacer knew before (an upgrade's re-read failed) stands there.
                self.state.insert(phone, State::Failed { failures });
                self.policy.pacer().set_level(&phone, None, Instant::now());
                self.timers.push(Reverse((Instant::now() + wait, phone)));
            }
        }
        if again {
            self.enqueue(phone);
        }
    }

    /// A read (ours or discovery's) answered.
    fn answered(&mut self, phone: GraphId, read: Read) {
        let now = Instant::now();
        match read {
            Read::Level(l) => {
                METRICS
                    .throughput_reads
                    .with_label_values(&[match l {
                        Level::Standard => "standard",
                        Level::High => "high",
                    }])
                    .inc();
                let before = self.state.insert(phone, State::Known(l));
                if before != Some(State::Known(l)) {
                    tracing::info!(phone_number_id = %phone, level = l.as_str(), throughput = l.mps(), "phone number's throughput level read from Meta");
                }
                self.policy.pacer().set_level(&phone, Some(l), now);
            }
            Read::Unknown(what) => {
                METRICS
                    .throughput_reads
                    .with_label_values(&["unknown"])
                    .inc();
                let before = self.state.get(&phone).copied();
                if !matches!(before, Some(State::Known(_))) {
                    self.state.insert(phone, State::Unknown);
                    tracing::info!(phone_number_id = %phone, answer = %what, "Meta's answer names no throughput level known here: the number keeps what is known (shaping.throughput unless listed)");
                }
                self.policy.pacer().set_level(&phone, None, now);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a read failed.
enum Failed {
    /// The token was refused.
    Auth(String),
    Other(String),
}

/// The `?fields=throughput` read of a phone number.
struct Reader {
    client: HttpClient,
    base: String,
    timeout: Duration,
}

impl Reader {
    async fn read(&self, phone: &GraphId, token: &Secret) -> Result<Read, Failed> {
        let uri = format!("{}{phone}?fields=throughput", self.base);
        match health::fetch(&self.client, &uri, token, self.timeout).await {
            Err(e) => Err(Failed::Other(e)),
            Ok((status, body)) => level(status, &body),
        }
    }
}

/// What a `?fields=throughput` answer says (pure).
fn level(status: StatusCode, body: &[u8]) -> Result<Read, Failed> {
    if !status.is_success() {
        let f = envelope::failure(status.as_u16(), body);
        return Err(if f.auth {
            Failed::Auth(f.what)
        } else {
            Failed::Other(f.what)
        });
    }
    graph_tput::parse(body).map_err(Failed::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert!(matches!(
            level(
                StatusCode::OK,
                br#"{"throughput":{"level":"HIGH"},"id":"1"}"#
            ),
            Ok(Read::Level(Level::High))
        ));
        assert!(matches!(
            level(
                StatusCode::OK,
                br#"{"throughput":{"level":"NOT_APPLICABLE"}}"#
            ),
            Ok(Read::Unknown(_))
        ));
        assert!(matches!(
            level(
                StatusCode::BAD_REQUEST,
                br#"{"error":{"message":"bad token","type":"OAuthException","code":190}}"#
            ),
            Err(Failed::Auth(_))
        ));
        assert!(matches!(
            level(StatusCode::BAD_GATEWAY, b""),
            Err(Failed::Other(_))
        ));
        assert!(matches!(
            level(StatusCode::OK, b"nope"),
            Err(Failed::Other(_))
        ));
    }
}
