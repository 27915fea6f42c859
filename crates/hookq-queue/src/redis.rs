//! The Redis driver: lists that any language can `LPUSH` to, leases that a
//! live worker reclaims from a dead one, delayed retries in a sorted set.
//!
//! # Keys
//!
//! Every key carries the prefix as one hash tag, `{prefix}:…`, so a Redis
//! Cluster keeps them in one slot and the Lua scripts may touch them all:
//!
//! | key                 | type   | holds                                                    |
//! |---------------------|--------|----------------------------------------------------------|
//! | `{prefix}:ready`    | list   | jobs to take: producers `LPUSH`, workers take from the right |
//! | `{prefix}:delayed`  | zset   | `<seq>\|<body>` scored by due time (server ms)            |
//! | `{prefix}:held`     | hash   | token → `<receive count>\|<body>` of every claimed job    |
//! | `{prefix}:leases`   | zset   | token scored by lease deadline (server ms)               |
//! | `{prefix}:dead`     | list   | [`DeadLetter`] JSON, oldest on the left                  |
//! | `{prefix}:seq`      | string | counter for tokens and delayed members                   |
//! | `{prefix}:once:<k>` | string | a `push_once` key, expiring after its window             |
//!
//! [`ready_key`] names the list external producers push to: a plain
//! `LPUSH {hookq}:ready '<job json>'` enqueues a job.
//!
//! # Life of a job
//!
//! 1. **Push**: [`QueuePush::push`] `LPUSH`es ready jobs to `ready`; a job
//!    with a delay goes to `delayed`, scored by the Redis server's time plus
//!    the delay, behind a sequence number so identical bodies stay distinct
//!    (`redis/push.lua`). A delayed push that may find receivers waiting
//!    past its due time also pushes the wake marker to `ready` (step 3).
//! 2. **Receive**: one Lua script per call (`redis/receive.lua`) moves due
//!    `delayed` members to `ready` (at most 1,000 a call), returns expired
//!    leases to the front of `ready`, pops up to `max` jobs from the right of
//!    `ready`, gives each a new token, and records it in `held` and `leases`
//!    (deadline = server time + lease). The script runs atomically, so no two
//!    workers ever claim one job and no delayed job moves twice. A job
//!    returned from an expired lease is pushed as `\0<count>|<body>`, so its
//!    receive count carries over (the worker dead-letters a job received
//!    more than `queue.max_receives` times); bodies taken from `ready` never
//!    start with a NUL byte otherwise (they are JSON). The wake marker,
//!    `\0wake`, is dropped, never claimed. A body that is not UTF-8 is
//!    handed over with its bytes ([`Received::not_utf8`]).
//! 3. **Wait**: when nothing was claimed, the receiver blocks on
//!    `BLMOVE ready ready RIGHT RIGHT <t>` — a rotation of the list onto
//!    itself, which wakes when `ready` is non-empty and leaves the job where
//!    it was, so nothing is ever out of the list without a lease even if the
//!    client gives up. `t` is the smaller of the wait left and the time to the
//!    next delayed job or lease deadline (the script returns it), then the
//!    script runs again. An idle receiver costs two commands per wait. A job
//!    delayed while receivers wait is what `t` does not know: when a push of
//!    delayed jobs only finds `ready` empty and brings a job due sooner than
//!    every one in `delayed`, it pushes the wake marker, which ends every
//!    block; the receive script drops it and returns the new time to wait
//!    for. A job due no sooner than one already delayed needs none (every
//!    blocked receiver wakes by then), a non-empty `ready` has no receiver
//!    blocked on it, so `ready` holds at most one marker, an idle queue none,
//!    and `LLEN ready` (the depth) counts a marker as a job until a receive.
//! 4. **Ack**: a script deletes the tokens from `held` and `leases`. A token
//!    whose lease expired and was reclaimed is simply absent, so a late ack
//!    never touches the job's new hold; the script counts what it removed, so
//!    the worker learns how many acks came too late. **Extend** sets the
//!    deadline of tokens still in `leases` (`ZADD XX`) to server time + lease
//!    and returns the tokens that are gone: those jobs now belong to another
//!    receive, and the worker settles nothing more for them.
//!    [`QueuePush::push_once`] runs the push script with a key,
//!    `{prefix}:once:<key>`, set with `SET NX PX <window>` in the same step:
//!    a push whose key is already set pushes nothing.
//!    [`QueuePush::push_once_each`] does the same for several keyed pushes of
//!    ready jobs in one call (`redis/push_each.lua`), each answered alone.
//! 5. **Dead letters**: [`DeadLetter`] JSON is `RPUSH`ed to `dead`. Replay
//!    and purge walk the list from the oldest entry in steps: one script call
//!    (`redis/dlq.lua`) per at most 1,000 entries, each popping an entry from
//!    the left and either taking it (a replay pushes its `job` to `ready` in
//!    the same step, or the exact bytes of its `job_base64`) or pushing it
//!    back on the right. No call holds Redis for
//!    long whatever the list's length (a step over entries of ~500 bytes took
//!    at most 14 ms on a loaded machine; one script over 200,000 entries held
//!    Redis 0.6 s, and Redis answers every other client `BUSY` once a script
//!    passes `busy-reply-threshold`, 5 s by default), and every entry is in
//!    `dead` between steps, so a walk that dies midway loses nothing. The walk
//!    covers the length `dead` had at its first step: what it pushes back
//!    and what is dead-lettered meanwhile are appended behind that and never
//!    walked, so the walk ends. When the limit stops it early, what it kept
//!    is moved back in front (the shorter way round), so what stays keeps its
//!    order; entries dead-lettered during a walk may end up among older
//!    ones. A purge without an app filter only trims the list's head
//!    (`LTRIM`), or `UNLINK`s it when the whole list goes.
//!
//! # Guarantees
//!
//! At least once: a job leaves Redis only on ack, so a worker killed at any
//! moment loses nothing — its holds expire and any receiver reclaims them.
//! Ordering is not guaranteed (reclaimed jobs jump the queue, delayed ones
//! join at the back). With persistence off, a Redis restart loses what it held.
//!
//! # Connections
//!
//! Acks, pushes and the other short commands share `pool_size` multiplexed
//! connections, taken in turn, with a 5 s response timeout (redis-rs's
//! default is 500 ms). redis-rs pipelines concurrent requests on each, so
//! taking one costs nothing: no checkout, no health-check round trip (a
//! checkout pool's `PING` per command tripled what one `publish` cost). A
//! connection is opened on first use and opened again after a command on it
//! fails with a broken connection, a timeout, or an answer that says the
//! server at its other end is not the primary (`READONLY`, `MASTERDOWN`,
//! `UNBLOCKED`: a failover behind the same address left it talking to the
//! demoted primary). After a broken or wrong-server answer on a connection
//! used before, the command is sent once more on a new one — neither ran it.
//! Each concurrent `receive` runs on a connection of its own, taken from a
//! small free list, because a blocked `BLMOVE` holds up every other command
//! on its connection; its response timeout is set above each block. A
//! wrong-server answer to a receive empties the free list (its connections
//! reach the same server) and the receive runs once more on a new
//! connection. Connection failures and wrong-server answers are
//! [`QueueError::Unavailable`]; scripts are re-sent after a `NOSCRIPT`, so a
//! restarted Redis works again without a new driver.
//!
//! With Redis Sentinel ([`RedisSettings::sentinel`]), every new connection
//! first asks the sentinels in turn for the primary's address
//! (`SENTINEL get-master-addr-by-name`) and goes there; the URL gives only
//! the scheme, credentials and database. Since a connection is reopened
//! after every failure above, the driver follows a failover by itself.
//! Until a sentinel has named the primary once, nothing is connected to;
//! when none answers later, the last address named is used.

mod limits;

use crate::{
    DeadLetters, Depth, DlqEntry, DlqFilter, Handle, Keyed, Once, Outgoing, QueueConsume,
    QueueError, QueuePush, Received, dlq_entry_id,
};
use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, Pipeline,
    RedisError, RetryMethod, Script, ScriptInvocation,
};
use async_trait::async_trait;
use hookq_core::DeadLetter;
use hookq_core::config::{RedisSettings, SentinelSettings};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

mod health;

/// The response timeout of every non-blocking command and script.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a sentinel and its answer may take, each.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// What a blocking call's response timeout adds to its server-side timeout.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// The longest single block; a longer wait blocks again.
const MAX_BLOCK: Duration = Duration::from_secs(60);
/// Most delayed jobs and most expired leases one receive moves.
const MOVE_BATCH: usize = 1000;
/// Most jobs one receive claims.
const MAX_CLAIM: usize = 1000;
/// Dead-letter entries read per `LRANGE` when listing.
const DLQ_PAGE: isize = 500;
/// Most dead-letter entries one step of a replay or purge walks (one script
/// call; a step over entries of about 500 bytes took at most 14 ms of
/// Redis's time on a loaded machine, see docs/redis.md), so a walk of any
/// length never holds Redis for long.
const DLQ_CHUNK: usize = 1000;
/// The longest delay kept exactly (about 300 years; scores are doubles).
const MAX_DELAY_MS: u128 = 10_000_000_000_000;

/// The key `name` of the queue with `prefix`: `{prefix}:name`.
pub fn key_for(prefix: &str, name: &str) -> String {
    format!("{{{prefix}}}:{name}")
}

/// The list external producers `LPUSH` job JSON to: `{prefix}:ready`
/// (`{hookq}:ready` with the default prefix).
pub fn ready_key(prefix: &str) -> String {
    key_for(prefix, "ready")
}

struct Keys {
    ready: String,
    delayed: String,
    held: String,
    leases: String,
    dead: String,
    seq: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            ready: ready_key(prefix),
            delayed: key_for(prefix, "delayed"),
            held: key_for(prefix, "held"),
            leases: key_for(prefix, "leases"),
            dead: key_for(prefix, "dead"),
            seq: key_for(prefix, "seq"),
        }
    }
}

struct Scripts {
    receive: Script,
    push: Script,
    push_each: Script,
    ack: Script,
    extend: Script,
    dlq: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            receive: Script::new(include_str!("redis/receive.lua")),
            push: Script::new(include_str!("redis/push.lua")),
            push_each: Script::new(include_str!("redis/push_each.lua")),
            ack: Script::new(include_str!("redis/ack.lua")),
            extend: Script::new(include_str!("redis/extend.lua")),
            dlq: Script::new(include_str!("redis/dlq.lua")),
        }
    }
}

/// A connection lent for one short command, and which slot it came from.
struct Lent {
    conn: MultiplexedConnection,
    slot: usize,
    generation: u64,
    /// Opened for this command, not used before.
    fresh: bool,
}

/// Where new connections go: the URL's server, or with Sentinel the
/// primary as the sentinels last named it (see the module docs).
struct Target {
    /// The client for the server connections are opened to; with Sentinel,
    /// replaced when the sentinels name another address.
    client: Mutex<Client>,
    sentinel: Option<SentinelSettings>,
    /// With Sentinel: a sentinel has named the primary at least once (until
    /// then the URL's host is only a stand-in, never connected to).
    resolved: AtomicBool,
}

impl Target {
    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Opens a connection; with Sentinel, to the primary the sentinels name
    /// now (asked before every new connection, so a connection reopened
    /// after a failure follows a failover), or to the last one they named
    /// when none answers.
    async fn open(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(sentinel) = &self.sentinel {
            self.resolve(sentinel).await;
            if !self.resolved.load(Ordering::Relaxed) {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!(
                        "no redis sentinel has named the primary of {:?} yet",
                        sentinel.master
                    ),
                )));
            }
        }
        self.client()
            .get_multiplexed_async_connection_with_config(&connection_config())
            .await
    }

    /// Asks the sentinels in turn for the primary's address
    /// (`SENTINEL get-master-addr-by-name`) and points the client at it.
    async fn resolve(&self, s: &SentinelSettings) {
        for (host, port) in &s.sentinels {
            match ask_sentinel(s, host, *port).await {
                Ok(Some(addr)) => {
                    let current = self.client();
                    let info = current.get_connection_info();
                    let moved = match info.addr() {
                        ConnectionAddr::Tcp(h, p) => (h, *p) != (&addr.0, addr.1),
                        ConnectionAddr::TcpTls {
                            host: h, port: p, ..
                        } => (h, *p) != (&addr.0, addr.1),
                        _ => true,
                    };
                    if !moved && self.resolved.load(Ordering::Relaxed) {
                        return;
                    }
                    let new_addr = match info.addr().clone() {
                        ConnectionAddr::TcpTls {
                            insecure,
                            tls_params,
                            ..
                        } => ConnectionAddr::TcpTls {
                            host: addr.0.clone(),
                            port: addr.1,
                            insecure,
                            tls_params,
                        },
                        _ => ConnectionAddr::Tcp(addr.0.clone(), addr.1),
                    };
                    match Client::open(info.clone().set_addr(new_addr)) {
                        Ok(client) => {
                            info!(master = %s.master, primary = %format!("{}:{}", addr.0, addr.1), "redis sentinel: primary found");
                            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
                            self.resolved.store(true, Ordering::Relaxed);
                        }
                        Err(e) => warn!(error = %e, "redis sentinel: unusable primary address"),
                    }
                    return;
                }
                Ok(None) => {
                    warn!(sentinel = %format!("{host}:{port}"), master = %s.master, "redis sentinel knows no such master")
                }
                Err(e) => {
                    debug!(sentinel = %format!("{host}:{port}"), error = %e, "redis sentinel did not answer")
                }
            }
        }
        debug!(master = %s.master, "no redis sentinel named the primary; keeping the last one");
    }
}

/// One sentinel's answer to `SENTINEL get-master-addr-by-name`, on a short-lived connection.
async fn ask_sentinel(
    s: &SentinelSettings,
    host: &str,
    port: u16,
) -> Result<Option<(String, u16)>, RedisError> {
    let client = Client::open(ConnectionAddr::Tcp(host.to_string(), port))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    if let Some(password) = &s.password {
        let mut auth = ::redis::cmd("AUTH");
        if let Some(user) = &s.username {
            auth.arg(user);
        }
        auth.arg(password).query_async::<()>(&mut conn).await?;
    }
    let addr: Option<(String, String)> = ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&s.master)
        .query_async(&mut conn)
        .await?;
    Ok(addr.and_then(|(h, p)| Some((h, p.parse().ok()?))))
}

/// The connections short commands share, opened on first use (see the module docs).
struct Shared {
    target: Target,
    slots: Vec<tokio::sync::Mutex<(u64, Option<MultiplexedConnection>)>>,
    next: AtomicUsize,
}

impl Shared {
    fn new(target: Target, size: usize) -> Self {
        Self {
            target,
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new((0, None)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next slot's connection, opened now if it has none.
    async fn next(&self) -> Result<Lent, RedisError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.get(slot).await
    }

    /// The connection of `slot`, opened now if it has none.
    async fn get(&self, slot: usize) -> Result<Lent, RedisError> {
        let mut guard = self.slots[slot].lock().await;
        let (generation, conn) = &mut *guard;
        if let Some(conn) = conn {
            return Ok(Lent {
                conn: conn.clone(),
                slot,
                generation: *generation,
                fresh: false,
            });
        }
        let opened = self.target.open().await?;
        *generation += 1;
        *conn = Some(opened.clone());
        Ok(Lent {
            conn: opened,
            slot,
            generation: *generation,
            fresh: true,
        })
    }

    /// Notes how a command on the connection of `slot` and `generation`
    /// failed: a broken or silent connection, or one to a server that is no
    /// longer the primary ([`is_wrong_server`]), is dropped (unless it was
    /// replaced meanwhile), so the slot opens a new one.
    async fn failed(&self, slot: usize, generation: u64, e: &RedisError) {
        if !(e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || is_wrong_server(e)) {
            return;
        }
        let mut guard = self.slots[slot].lock().await;
        if guard.0 == generation {
            guard.1 = None;
        }
    }
}

/// One request for [`RedisQueue::run`].
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
    Script(&'a ScriptInvocation<'a>),
}

/// The plain commands the driver sends that only read.
const READ_COMMANDS: [&[u8]; 2] = [b"PING", b"LRANGE"];

impl Request<'_> {
    /// Whether the request writes, so that its failure says the driver
    /// cannot write now: every script does, and every command but the
    /// reads of [`READ_COMMANDS`]; the pipeline (depth) only reads.
    fn writes(&self) -> bool {
        match self {
            Request::Script(_) => true,
            Request::Pipe(_) => false,
            Request::Cmd(cmd) => !matches!(
                cmd.args_iter().next(),
                Some(::redis::Arg::Simple(name))
                    if READ_COMMANDS.iter().any(|r| name.eq_ignore_ascii_case(r))
            ),
        }
    }
}

/// How every connection is opened: a bounded connect, redis-rs's 500 ms
/// default response timeout raised to [`COMMAND_TIMEOUT`].
fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
}

/// The Redis [`QueueDriver`](crate::QueueDriver). See the module docs for the keys and a job's life.
pub struct RedisQueue {
    shared: Shared,
    /// Idle connections for receivers, at most `idle_receivers` of them.
    receivers: Mutex<Vec<MultiplexedConnection>>,
    idle_receivers: usize,
    prefix: String,
    keys: Keys,
    lease: Duration,
    scripts: Scripts,
    /// A write failed, and no [write check](RedisQueue::check_writes) has
    /// succeeded since: what [`QueueConsume::writable`] answers.
    writes_failing: AtomicBool,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// A driver for `settings`. Only the URL is checked here (a bad one is a
    /// [`QueueError::Backend`]); Redis is contacted on first use, so Redis
    /// being down at start is not an error: calls report
    /// [`QueueError::Unavailable`] until it answers.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, QueueError> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| QueueError::Backend(format!("redis url: {e}")))?;
        let target = Target {
            client: Mutex::new(client),
            sentinel: settings.sentinel.clone(),
            resolved: AtomicBool::new(false),
        };
        Ok(Self {
            shared: Shared::new(target, settings.pool_size),
            receivers: Mutex::new(Vec::new()),
            idle_receivers: settings.pool_size.max(1),
            prefix: settings.prefix.clone(),
            keys: Keys::new(&settings.prefix),
            lease: settings.lease,
            scripts: Scripts::new(),
            writes_failing: AtomicBool::new(false),
        })
    }

    /// The full name of this queue's key `name`, e.g. `key("ready")` is `{prefix}:ready`.
    pub fn key(&self, name: &str) -> String {
        key_for(&self.prefix, name)
    }

    /// The key prefix (the hash tag).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Runs one short request (`what` names it in errors) on a shared
    /// connection, as [`RedisQueue::send`] does, and notes a write that
    /// failed for [`QueueConsume::writable`].
    async fn run<T: FromRedisValue>(
        &self,
        what: &str,
        request: Request<'_>,
    ) -> Result<T, QueueError> {
        let result = self.send(what, request).await;
        if result.is_err() && request.writes() {
            self.writes_failing.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Sends one short request (`what` names it in errors) on a shared
    /// connection. A connection that broke since its last use (a Redis
    /// restart), or that reaches a server no longer the primary (a failover
    /// behind the same address), is replaced and the request sent once more
    /// on the new one: neither ran it. A request whose reply timed out is
    /// not sent again: it may have run (Redis paused, not gone), so the
    /// caller gets [`QueueError::Unavailable`] and decides — the worker
    /// re-sends its pushes under a once-key (no second retry job), a
    /// producer's caller learns the push may or may not be in.
    async fn send<T: FromRedisValue>(
        &self,
        what: &str,
        request: Request<'_>,
    ) -> Result<T, QueueError> {
        let mut retry = None;
        loop {
            let Lent {
                mut conn,
                slot,
                generation,
                fresh,
            } = match retry {
                None => self.shared.next().await,
                Some(slot) => self.shared.get(slot).await,
            }
            .map_err(|e| redis_error("connect", e))?;
            let result = match request {
                Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
                Request::Script(call) => call.invoke_async(&mut conn).await,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) => {
                    self.shared.failed(slot, generation, &e).await;
                    // A reply that timed out may come: the request may have
                    // run, so it is not sent again (the caller decides).
                    let broken = (e.is_connection_dropped() || e.is_io_error()) && !e.is_timeout();
                    if (broken || is_wrong_server(&e)) && retry.is_none() && !fresh {
                        debug!(error = %e, "redis connection dropped or not to the primary; reconnecting");
                        // The slot has let go of it: the next get opens a new one.
                        retry = Some(slot);
                        continue;
                    }
                    return Err(redis_error(what, e));
                }
            }
        }
    }

    /// Pushes ready and delayed jobs, with `once` (a key and its window in
    /// ms) only if that key is not set; in one round trip either way.
    async fn push_keyed(
        &self,
        once: Option<(&str, u128)>,
        messages: Vec<Outgoing>,
    ) -> Result<Once, QueueError> {
        if messages.is_empty() {
            return Ok(Once::Pushed);
        }
        let mut ready = Vec::new();
        let mut delayed = Vec::new();
        for m in messages {
            if m.delay.is_zero() {
                ready.push(m.body);
            } else {
                // Whole milliseconds, rounded up: never due early.
                let ms = m.delay.as_nanos().div_ceil(1_000_000).min(MAX_DELAY_MS);
                delayed.push((ms.to_string(), m.body));
            }
        }
        if delayed.is_empty() && once.is_none() {
            let mut lpush = ::redis::cmd("LPUSH");
            lpush.arg(&self.keys.ready).arg(&ready);
            return self
                .run::<()>("push", Request::Cmd(&lpush))
                .await
                .map(|()| Once::Pushed);
        }
        let (marker, window_ms) = once.unwrap_or((&self.keys.seq, 0));
        let mut call = self.scripts.push.prepare_invoke();
        call.key(&self.keys.ready)
            .key(&self.keys.delayed)
            .key(&self.keys.seq)
            .key(marker)
            .arg(window_ms.to_string())
            .arg(ready.len())
            .arg(&ready);
        for (ms, body) in &delayed {
            call.arg(ms).arg(body);
        }
        let pushed: i64 = self.run("push", Request::Script(&call)).await?;
        Ok(if pushed < 0 {
            Once::Duplicate
        } else {
            Once::Pushed
        })
    }

    /// After a failed write, checks whether writes work again with a write
    /// that changes nothing (`INCRBY seq 0`) on a shared connection; the
    /// flag clears only when it succeeds. Any successful write would not
    /// do: a full Redis (`maxmemory`) still takes acks, which free memory,
    /// while it refuses pushes, and `INCRBY` is refused like a push.
    async fn check_writes(&self) {
        if !self.writes_failing.load(Ordering::Relaxed) {
            return;
        }
        let mut incrby = ::redis::cmd("INCRBY");
        incrby.arg(&self.keys.seq).arg(0);
        match self.run::<i64>("write check", Request::Cmd(&incrby)).await {
            Ok(_) => self.writes_failing.store(false, Ordering::Relaxed),
            Err(e) => debug!(error = %e, "redis still refuses writes"),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<MultiplexedConnection>> {
        // The free list stays consistent whatever panicked while holding it.
        self.receivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for one receive: an idle one (`true`) or a new one.
    async fn receiver(&self) -> Result<(MultiplexedConnection, bool), RedisError> {
        if let Some(conn) = self.idle().pop() {
            return Ok((conn, true));
        }
        let conn = self.shared.target.open().await?;
        Ok((conn, false))
    }

    fn release(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle();
        if idle.len() < self.idle_receivers {
            idle.push(conn);
        }
    }

    /// Runs the receive script once: what it claimed, and how long until
    /// something becomes ready by itself.
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        max: usize,
    ) -> Result<(Vec<Received>, Option<Duration>), RedisError> {
        conn.set_response_timeout(COMMAND_TIMEOUT);
        let (next, items): (i64, Vec<Vec<u8>>) = self
            .scripts
            .receive
            .key(&self.keys.ready)
            .key(&self.keys.delayed)
            .key(&self.keys.held)
            .key(&self.keys.leases)
            .key(&self.keys.seq)
            // The script claims with one variadic HSET/ZADD: keep within Lua's stack.
            .arg(max.min(MAX_CLAIM))
            .arg(self.lease_ms())
            .arg(MOVE_BATCH)
            .invoke_async(conn)
            .await?;
        let mut got = Vec::with_capacity(items.len() / 3);
        let mut items = items.into_iter();
        while let (Some(token), Some(body), Some(count)) =
            (items.next(), items.next(), items.next())
        {
            // A body that is not UTF-8 reaches the worker with its bytes
            // (rather than failing every receive): the worker dead-letters it.
            let (body, not_utf8) = match String::from_utf8(body) {
                Ok(text) => (text, None),
                Err(e) => {
                    let bytes = e.into_bytes();
                    (String::from_utf8_lossy(&bytes).into_owned(), Some(bytes))
                }
            };
            got.push(Received {
                handle: Handle(String::from_utf8_lossy(&token).into_owned()),
                body,
                receive_count: std::str::from_utf8(&count)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                not_utf8,
            });
        }
        let next = u64::try_from(next).ok().map(Duration::from_millis);
        Ok((got, next))
    }

    /// Claims, and while nothing comes and `deadline` is ahead, blocks until
    /// `ready` has something or the next delayed job or lease is due.
    async fn receive_on(
        &self,
        conn: &mut MultiplexedConnection,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<Received>, RedisError> {
        loop {
            let (got, next) = self.claim(conn, max).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            // +1 ms: due times are whole server milliseconds; waking a little
            // late beats waking just early and blocking again for 1 ms.
            let until_due = next.map_or(Duration::MAX, |n| n + Duration::from_millis(1));
            let until_deadline = left <= until_due.min(MAX_BLOCK);
            let block = left
                .min(until_due)
                .min(MAX_BLOCK)
                .max(Duration::from_millis(1));
            conn.set_response_timeout(block + BLOCK_MARGIN);
            // A rotation of `ready` onto itself: it only waits for the list to
            // be non-empty and never takes a job out of it, so a client that
            // gives up (timeout, cancellation) cannot lose one.
            let woke: Option<Vec<u8>> = ::redis::cmd("BLMOVE")
                .arg(&self.keys.ready)
                .arg(&self.keys.ready)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(format!("{:.3}", block.as_secs_f64()))
                .query_async(conn)
                .await?;
            if woke.is_none() && until_deadline {
                // The wait is over and nothing came. What falls due just now
                // is for the next call, which claims first.
                return Ok(Vec::new());
            }
        }
    }

    /// Replays or purges the dead-letter entries `filter` selects, oldest
    /// first, in steps of at most [`DLQ_CHUNK`] entries (`redis/dlq.lua`).
    /// The walk covers the entries `dead` held when it began and no more:
    /// entries dead-lettered meanwhile are appended behind them. When the
    /// limit stops it early, what it kept is put back in front of what it
    /// did not reach, so the order of what stays is unchanged.
    async fn dlq_walk(&self, mode: &str, filter: &DlqFilter) -> Result<usize, QueueError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let what = format!("dlq {mode}");
        let (mut done, mut kept) = (0, 0);
        // Entries of the walk not walked yet; `None` until the first step measured it.
        let mut left: Option<usize> = None;
        while done < limit && left != Some(0) {
            let mut call = self.scripts.dlq.prepare_invoke();
            call.key(&self.keys.dead)
                .key(&self.keys.ready)
                .arg(mode)
                .arg(if filter.app_id.is_some() { "1" } else { "0" })
                .arg(filter.app_id.as_deref().unwrap_or(""))
                .arg(if limit == usize::MAX {
                    -1
                } else {
                    i64::try_from(limit - done).unwrap_or(i64::MAX)
                })
                .arg(DLQ_CHUNK)
                .arg(left.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)))
                .arg(dlq_conditions(filter));
            let (taken, walked, len): (usize, usize, usize) =
                self.run(&what, Request::Script(&call)).await?;
            done += taken;
            kept += walked - taken;
            left = Some(left.unwrap_or(len).saturating_sub(walked));
            if walked == 0 {
                break;
            }
        }
        let unwalked = left.unwrap_or(0);
        if kept > 0 && unwalked > 0 {
            self.dlq_restore_order(unwalked).await?;
        }
        Ok(done)
    }

    /// After a walk stopped short, `dead` is: the `unwalked` entries, then
    /// what the walk kept (and what was dead-lettered meanwhile). Moves the
    /// shorter of the two parts to the other end, in steps, so what the walk
    /// kept is in front again.
    async fn dlq_restore_order(&self, unwalked: usize) -> Result<(), QueueError> {
        let mut llen = ::redis::cmd("LLEN");
        llen.arg(&self.keys.dead);
        let len: usize = self.run("dlq order", Request::Cmd(&llen)).await?;
        let behind = len.saturating_sub(unwalked);
        let (direction, mut n) = if behind <= unwalked {
            ("back", behind)
        } else {
            ("forward", unwalked)
        };
        while n > 0 {
            let step = n.min(DLQ_CHUNK);
            let mut call = self.scripts.dlq.prepare_invoke();
            call.key(&self.keys.dead)
                .key(&self.keys.ready)
                .arg("rotate")
                .arg(direction)
                .arg("")
                .arg(0)
                .arg(step)
                .arg(0);
            let (_, moved, _): (usize, usize, usize) =
                self.run("dlq order", Request::Script(&call)).await?;
            if moved == 0 {
                break;
            }
            n -= step;
        }
        Ok(())
    }
}

/// Whether `e` says this connection reaches a server that is not (or no
/// longer) the primary: a replica refusing a write (`READONLY`), a replica
/// cut off from its primary (`MASTERDOWN`), a blocked command ended because
/// the server turned replica (`UNBLOCKED`). A replica runs none of the
/// request, and a new connection to the same address may reach the primary.
fn is_wrong_server(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "UNBLOCKED"))
}

/// Whether `e` says the server or the path to it is down, so trying later may work.
fn is_unavailable(e: &RedisError) -> bool {
    if e.kind() == ErrorKind::AuthenticationFailed {
        // A wrong password stays wrong: say so rather than retry forever.
        return false;
    }
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || is_wrong_server(e)
    {
        return true;
    }
    // LOADING, TRYAGAIN, CLUSTERDOWN; BUSY (a script running); OOM (a full
    // Redis with noeviction: room comes back as workers drain the queue).
    matches!(
        e.retry_method(),
        RetryMethod::Reconnect
            | RetryMethod::ReconnectFromInitialConnections
            | RetryMethod::WaitAndRetry
            | RetryMethod::RetryImmediately
    ) || matches!(e.code(), Some("BUSY" | "LOADING" | "OOM"))
}

fn redis_error(what: &str, e: RedisError) -> QueueError {
    if is_unavailable(&e) {
        QueueError::Unavailable(format!("redis {what}: {e}"))
    } else {
        QueueError::Backend(format!("redis {what}: {e}"))
    }
}

#[async_trait]
impl QueuePush for RedisQueue {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn push(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        self.push_keyed(None, messages).await.map(|_| ())
    }

    async fn push_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Outgoing>,
    ) -> Result<Once, QueueError> {
        let marker = self.key(&format!("once:{key}"));
        let window_ms = window.as_millis().clamp(1, MAX_DELAY_MS);
        self.push_keyed(Some((&marker, window_ms)), messages).await
    }

    /// One script call for all the groups (`redis/push_each.lua`). A group
    /// with a delayed message goes through [`QueuePush::push_once`] alone.
    async fn push_once_each(&self, groups: Vec<Keyed>) -> Vec<Result<Once, QueueError>> {
        if groups
            .iter()
            .any(|g| g.messages.iter().any(|m| !m.delay.is_zero()))
        {
            return crate::push_each_alone(self, groups).await;
        }
        let mut call = self.scripts.push_each.prepare_invoke();
        call.key(&self.keys.ready);
        for g in &groups {
            // A window of 0 is no key: the script does not touch it.
            let window = match g.window.as_millis() {
                0 => "0".to_string(),
                ms => ms.min(MAX_DELAY_MS).to_string(),
            };
            call.key(self.key(&format!("once:{}", g.key)))
                .arg(window)
                .arg(g.messages.len());
        }
        for m in groups.iter().flat_map(|g| &g.messages) {
            call.arg(&m.body);
        }
        match self.run::<Vec<i64>>("push", Request::Script(&call)).await {
            Ok(pushed) if pushed.len() == groups.len() => pushed
                .into_iter()
                .map(|n| Ok(if n < 0 { Once::Duplicate } else { Once::Pushed }))
                .collect(),
            Ok(pushed) => {
                let e = QueueError::Backend(format!(
                    "redis push: {} answers for {} groups",
                    pushed.len(),
                    groups.len()
                ));
                vec![Err(e); groups.len()]
            }
            Err(e) => vec![Err(e); groups.len()],
        }
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.run("ping", Request::Cmd(&::redis::cmd("PING"))).await
    }
}

#[async_trait]
impl QueueConsume for RedisQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let max = max.max(1);
        let start = Instant::now();
        let deadline = start
            .checked_add(wait)
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
        let (mut conn, mut reused) = self
            .receiver()
            .await
            .map_err(|e| redis_error("receive", e))?;
        let mut moved = false;
        loop {
            match self.receive_on(&mut conn, max, deadline).await {
                Ok(got) => {
                    self.release(conn);
                    // Redis answers: the moment to see whether it takes writes again.
                    self.check_writes().await;
                    return Ok(got);
                }
                // An idle connection that died with its server (a restart):
                // once more on a new one before reporting the outage.
                Err(e) if reused && e.is_connection_dropped() => {
                    debug!(error = %e, "redis receive connection dropped; reconnecting");
                    (conn, reused) = self
                        .receiver()
                        .await
                        .map_err(|e| redis_error("receive", e))?;
                }
                // A server that is no longer the primary (a failover behind
                // the same address): the idle connections reach it too, so
                // they go, and the receive runs once more on a new one.
                // The replica ran nothing, so nothing was claimed.
                Err(e) if !moved && is_wrong_server(&e) => {
                    debug!(error = %e, "redis receive connection not to the primary; reconnecting");
                    self.idle().clear();
                    moved = true;
                    (conn, reused) = self
                        .receiver()
                        .await
                        .map_err(|e| redis_error("receive", e))?;
                }
                Err(e) => return Err(redis_error("receive", e)),
            }
        }
    }

    async fn ack(&self, handles: &[Handle]) -> Result<usize, QueueError> {
        if handles.is_empty() {
            return Ok(0);
        }
        let tokens: Vec<&str> = handles.iter().map(|h| h.0.as_str()).collect();
        let mut call = self.scripts.ack.prepare_invoke();
        call.key(&self.keys.held)
            .key(&self.keys.leases)
            .arg(&tokens);
        let removed: usize = self.run("ack", Request::Script(&call)).await?;
        Ok(handles.len().saturating_sub(removed))
    }

    async fn extend(&self, handles: &[Handle]) -> Result<Vec<Handle>, QueueError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<&str> = handles.iter().map(|h| h.0.as_str()).collect();
        let mut call = self.scripts.extend.prepare_invoke();
        call.key(&self.keys.leases)
            .arg(self.lease_ms())
            .arg(&tokens);
        let gone: Vec<String> = self.run("extend", Request::Script(&call)).await?;
        Ok(gone.into_iter().map(Handle).collect())
    }

    async fn dead_letter(&self, entries: Vec<DeadLetter>) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let json = entries
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError::Backend(format!("dead letter to JSON: {e}")))?;
        let mut rpush = ::redis::cmd("RPUSH");
        rpush.arg(&self.keys.dead).arg(&json);
        self.run("dead letter", Request::Cmd(&rpush)).await
    }

    fn hold(&self) -> Duration {
        self.lease
    }

    fn health_store(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn crate::health::HealthStore> {
        self
    }

    fn writable(&self) -> bool {
        !self.writes_failing.load(Ordering::Relaxed)
    }

    fn limits(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn crate::limits::Limits> {
        std::sync::Arc::new(limits::RedisLimits::new(self))
    }
}

/// The conditions of `filter` other than the app, as `redis/dlq.lua`'s
/// ARGV[7]: a JSON object (`endpoint`, `reason` in ASCII lower case,
/// `before`/`after` in Unix ms, `ids`), or `""` when there are none.
fn dlq_conditions(filter: &DlqFilter) -> String {
    let mut c = serde_json::Map::new();
    if let Some(e) = &filter.endpoint {
        c.insert("endpoint".into(), e.as_str().into());
    }
    if let Some(r) = &filter.reason {
        c.insert("reason".into(), r.to_ascii_lowercase().into());
    }
    if let Some(t) = filter.failed_before_ms {
        c.insert("before".into(), t.into());
    }
    if let Some(t) = filter.failed_after_ms {
        c.insert("after".into(), t.into());
    }
    if let Some(ids) = &filter.ids {
        let ids = ids.iter().map(|i| i.to_ascii_lowercase().into()).collect();
        c.insert("ids".into(), serde_json::Value::Array(ids));
    }
    if c.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(c).to_string()
    }
}

#[async_trait]
impl DeadLetters for RedisQueue {
    async fn dlq_entries(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut skip = filter.offset;
        let mut start: isize = 0;
        loop {
            let mut lrange = ::redis::cmd("LRANGE");
            lrange
                .arg(&self.keys.dead)
                .arg(start)
                .arg(start + DLQ_PAGE - 1);
            let page: Vec<Vec<u8>> = self.run("dlq list", Request::Cmd(&lrange)).await?;
            let n = page.len();
            for raw in page {
                match serde_json::from_slice::<DeadLetter>(&raw) {
                    Ok(entry) => {
                        // The id of the text as stored, as `redis/dlq.lua` computes it.
                        let id = dlq_entry_id(&raw);
                        if !filter.matches(&id, &entry) {
                            continue;
                        }
                        if skip > 0 {
                            skip -= 1;
                            continue;
                        }
                        out.push(DlqEntry { id, entry });
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                    Err(e) => {
                        warn!(key = %self.keys.dead, error = %e, "skipping an unreadable dead-letter entry")
                    }
                }
            }
            if n < DLQ_PAGE.unsigned_abs() {
                return Ok(out);
            }
            start += DLQ_PAGE;
        }
    }

    async fn dlq_replay(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        self.dlq_walk("replay", filter).await
    }

    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        self.dlq_walk("purge", filter).await
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("LLEN")
            .arg(&self.keys.ready)
            .cmd("ZCARD")
            .arg(&self.keys.delayed)
            .cmd("HLEN")
            .arg(&self.keys.held)
            .cmd("LLEN")
            .arg(&self.keys.dead);
        let (ready, delayed, held, dead): (u64, u64, u64, u64) =
            self.run("depth", Request::Pipe(&pipe)).await?;
        Ok(Depth {
            ready,
            delayed,
            held,
            dead,
        })
    }
}
