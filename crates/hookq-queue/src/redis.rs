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
//! # Shards
//!
//! With `queue.redis.shards` above 1 (the default on a Redis Cluster is
//! 16) every key above exists once per shard: shard 0 under `{prefix}`,
//! shard k under `{prefix:k}` or `{prefix:k.n}` ([`shard_tag`]: slots spread
//! evenly over the ring), so a cluster spreads the
//! shards over its primaries and each script still touches one slot. A
//! push without a key goes to the next shard in turn (each driver starts at
//! a shard of its own); a keyed push (`push_once`, `push_once_each`) to the
//! shard of its key ([`shard_of_key`]), where its once-marker is; a dead
//! letter to the next shard in turn. A claimed job's handle names its shard
//! (`<token>@<k>`, bare for shard 0), so ack and extend go to it. Receivers
//! block on shard 0's `ready` only: a push that finds another shard's
//! `ready` empty (or brings a delayed job due sooner) then pushes the wake
//! marker to shard 0 (`redis/wake.lua`). A receive claims from the shards
//! in turn, from a shard that rotates per call, until it has `max`; one that
//! found every shard empty and was not woken lets the next receives skip
//! the sweep and block at once, for at most [`QUIET_SWEEP`] or until what
//! the sweep knew of falls due, so an idle worker costs about one command
//! per wait whatever the number of shards. A claim that filled `max` pushes
//! the marker too (more may be left for the others). With one shard (the
//! default on one server) the keys, handles and commands are those of
//! before shards existed.
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
//! On a Redis Cluster ([`RedisSettings::cluster`]) every connection is a
//! redis-rs cluster connection (one multiplexed connection per node, `MOVED`
//! and `ASK` followed, slots refreshed and dead nodes reconnected by the
//! client, retried quickly while a replica takes over). Its per-attempt
//! response timeout is off and the driver times each request out itself, so
//! the client never re-sends a request because its reply was late. It does
//! re-send one whose connection broke (it may have run: a push may then be
//! in twice, an ack is harmless), so the driver does not send such a request
//! again itself, and keeps the cluster connection (a new one would know only
//! the seed nodes). `WAIT` ([`RedisSettings::replicas_ack`]) is routed to the
//! primary of the write's slot, on the node connection the write used.
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
use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, Pipeline,
    RedisError, RedisFuture, RetryMethod, Script, ScriptInvocation, Value,
};
use async_trait::async_trait;
use hookq_core::DeadLetter;
use hookq_core::config::{RedisSettings, SentinelSettings};
use std::collections::BTreeMap;
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
/// With several shards, how long a receiver that found every shard empty
/// (and was not woken since) may skip sweeping them at the start of a
/// receive and only block on shard 0 (see the module docs).
const QUIET_SWEEP: Duration = Duration::from_secs(30);

/// The key `name` of the queue with `prefix`: `{prefix}:name`.
pub fn key_for(prefix: &str, name: &str) -> String {
    format!("{{{prefix}}}:{name}")
}

/// The list external producers `LPUSH` job JSON to: `{prefix}:ready`
/// (`{hookq}:ready` with the default prefix). With several shards it is
/// shard 0's list, the one receivers block on.
pub fn ready_key(prefix: &str) -> String {
    key_for(prefix, "ready")
}

/// Slots of a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The cluster slot of a hash tag: CRC16 (XMODEM) modulo 16384, as Redis computes it.
pub fn slot_of_tag(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for b in tag.bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    (u32::from(crc) % SLOTS) as u16
}

/// The hash tag of shard `shard` of `shards`: the prefix for shard 0, and
/// for shard k the first of `prefix:k`, `prefix:k.1`, `prefix:k.2`, … whose
/// slot lies in the k-th of `shards` equal arcs of the slot ring that starts
/// at the prefix's slot. So the shards' slots are spread evenly, and a
/// cluster whose primaries serve equal slot ranges (as `redis-cli --cluster
/// create` makes them) gets equal shares of the shards, give or take one.
/// The rule depends only on the prefix and the shard count, so every
/// producer and worker computes the same keys.
pub fn shard_tag(prefix: &str, shard: usize, shards: usize) -> String {
    if shard == 0 || shards <= 1 {
        return prefix.to_string();
    }
    let shards = shards as u32;
    let width = (SLOTS / shards).max(1);
    let start = (u32::from(slot_of_tag(prefix)) + shard as u32 * SLOTS / shards) % SLOTS;
    let fits = |tag: &str| (u32::from(slot_of_tag(tag)) + SLOTS - start) % SLOTS < width;
    let plain = format!("{prefix}:{shard}");
    if fits(&plain) {
        return plain;
    }
    (1..200_000)
        .map(|n| format!("{prefix}:{shard}.{n}"))
        .find(|tag| fits(tag))
        .unwrap_or(plain)
}

/// The shard of a keyed push (`push_once`) with key `key` among `shards`:
/// FNV-1a of the key, so every producer sends one key to one shard, where
/// its once-marker is.
pub fn shard_of_key(key: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
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
    wake: Script,
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
            wake: Script::new(include_str!("redis/wake.lua")),
        }
    }
}

/// A connection to one server, or to a Redis Cluster (redis-rs's cluster
/// client: a connection per node, `MOVED`/`ASK` followed, slots refreshed
/// and nodes reconnected by itself).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    /// With the response timeout applied around each request. The cluster
    /// client's own per-attempt timeout is off, so it never sends a request
    /// again because its reply was late (it may have run).
    Cluster(ClusterConnection, Duration),
}

impl Conn {
    fn set_response_timeout(&mut self, timeout: Duration) {
        match self {
            Conn::Single(c) => c.set_response_timeout(timeout),
            Conn::Cluster(_, t) => *t = timeout,
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(..))
    }

    /// `WAIT n timeout` on the connection (on a cluster: to the primary of
    /// `key`'s slot, on the node connection the write before it used): the
    /// number of replicas that acknowledged every write so far.
    async fn wait_replicas(
        &mut self,
        key: &str,
        n: u32,
        timeout: Duration,
    ) -> Result<u32, RedisError> {
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(n)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        match self {
            Conn::Single(c) => {
                c.set_response_timeout(timeout + COMMAND_TIMEOUT);
                let acked = wait.query_async(c).await;
                c.set_response_timeout(COMMAND_TIMEOUT);
                acked
            }
            Conn::Cluster(c, _) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let value = timed(timeout + COMMAND_TIMEOUT, c.route_command(wait, route)).await?;
                Ok(u32::from_redis_value(value)?)
            }
        }
    }
}

/// `f`, or a timeout error (as redis-rs reports one) after `timeout`.
async fn timed<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis cluster: no reply within the response timeout",
        )))
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c, t) => {
                let t = *t;
                Box::pin(timed(t, c.req_packed_command(cmd)))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c, t) => {
                let t = *t;
                Box::pin(timed(t, c.req_packed_commands(cmd, offset, count)))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
        }
    }
}

/// A connection lent for one short command, and which slot it came from.
struct Lent {
    conn: Conn,
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
    /// With Redis Cluster: the cluster client (seeded with the configured
    /// nodes), which every connection is opened with instead.
    cluster: Option<ClusterClient>,
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
    async fn open(&self) -> Result<Conn, RedisError> {
        if let Some(cluster) = &self.cluster {
            let conn = timed(CONNECT_TIMEOUT * 2, cluster.get_async_connection()).await?;
            return Ok(Conn::Cluster(conn, COMMAND_TIMEOUT));
        }
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
            .map(Conn::Single)
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
    slots: Vec<tokio::sync::Mutex<(u64, Option<Conn>)>>,
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
    /// A cluster connection is kept but for a wrong-server answer: it
    /// reconnects its nodes itself, and knows the nodes a new one, seeded
    /// with the configured list only, might not reach.
    async fn failed(&self, slot: usize, generation: u64, e: &RedisError) {
        if !(e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || is_wrong_server(e)) {
            return;
        }
        if self.target.cluster.is_some() && !is_wrong_server(e) {
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
    receivers: Mutex<Vec<Conn>>,
    idle_receivers: usize,
    prefix: String,
    /// Shard 0's keys (`{prefix}:…`), the only shard on one server by default.
    keys: Keys,
    /// Every shard's keys, shard 0's first.
    shard_keys: Vec<Keys>,
    /// Every shard's hash tag ([`shard_tag`]).
    shard_tags: Vec<String>,
    lease: Duration,
    scripts: Scripts,
    /// A write failed, and no [write check](RedisQueue::check_writes) has
    /// succeeded since: what [`QueueConsume::writable`] answers.
    writes_failing: AtomicBool,
    /// The shard whose write failed last (the write check writes there).
    failed_shard: AtomicUsize,
    /// The shard of the next push without a key, and of the next dead letter.
    next_push: AtomicUsize,
    /// The shard a sweep of the receivers starts at.
    next_sweep: AtomicUsize,
    /// With several shards: until when a receive may skip sweeping them and
    /// only block on shard 0 (the last sweep found all empty, nothing woke
    /// the block after it, and nothing known falls due before).
    quiet_until: Mutex<Option<Instant>>,
    /// `queue.redis.replicas_ack` and its timeout: `WAIT` after pushes and acks.
    replicas_ack: u32,
    replicas_ack_timeout: Duration,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .field("shards", &self.shard_keys.len())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// After a write: `WAIT` for replicas on the key's slot, and whether too
/// few acknowledging fails the request (a push) or is only logged (an ack:
/// lost with a failover, it only means the job is delivered again).
#[derive(Clone, Copy)]
struct Durable<'a> {
    key: &'a str,
    strict: bool,
}

impl RedisQueue {
    /// A driver for `settings`. Only the URL is checked here (a bad one is a
    /// [`QueueError::Backend`]); Redis is contacted on first use, so Redis
    /// being down at start is not an error: calls report
    /// [`QueueError::Unavailable`] until it answers.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, QueueError> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| QueueError::Backend(format!("redis url: {e}")))?;
        let cluster = match &settings.cluster {
            None => None,
            Some(nodes) => Some(
                ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    // No per-attempt timeout (a late reply is not a reason to
                    // send a request again: it may have run); the driver times
                    // each request out itself (see `Conn`).
                    .overall_response_timeout(None)
                    // Quick retries while a replica takes over a dead
                    // primary's slots (the default waits at least 1.28 s).
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|e| QueueError::Backend(format!("redis cluster nodes: {e}")))?,
            ),
        };
        let target = Target {
            client: Mutex::new(client),
            cluster,
            sentinel: settings.sentinel.clone(),
            resolved: AtomicBool::new(false),
        };
        let shards = settings.shards.max(1);
        let shard_tags: Vec<String> = (0..shards)
            .map(|i| shard_tag(&settings.prefix, i, shards))
            .collect();
        let start = shard_of_key(&format!("{:?}", std::time::SystemTime::now()), shards);
        Ok(Self {
            shared: Shared::new(target, settings.pool_size),
            receivers: Mutex::new(Vec::new()),
            idle_receivers: settings.pool_size.max(1),
            prefix: settings.prefix.clone(),
            keys: Keys::new(&settings.prefix),
            shard_keys: shard_tags.iter().map(|t| Keys::new(t)).collect(),
            shard_tags,
            lease: settings.lease,
            scripts: Scripts::new(),
            writes_failing: AtomicBool::new(false),
            failed_shard: AtomicUsize::new(0),
            // Producers start at a shard of their own, so that they do not all
            // fill the same shards in step.
            next_push: AtomicUsize::new(start),
            next_sweep: AtomicUsize::new(start),
            quiet_until: Mutex::new(None),
            replicas_ack: settings.replicas_ack,
            replicas_ack_timeout: settings.replicas_ack_timeout,
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

    /// How many shards the queue is split into (`queue.redis.shards`).
    pub fn shards(&self) -> usize {
        self.shard_keys.len()
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The next shard in turn (pushes without a key, dead letters).
    fn next_shard(&self) -> usize {
        self.next_push.fetch_add(1, Ordering::Relaxed) % self.shard_keys.len()
    }

    /// Runs one short request (`what` names it in errors) on a shared
    /// connection, as [`RedisQueue::send`] does, and notes a write that
    /// failed for [`QueueConsume::writable`].
    async fn run<T: FromRedisValue>(
        &self,
        what: &str,
        request: Request<'_>,
    ) -> Result<T, QueueError> {
        self.run_on(what, request, 0, None).await
    }

    /// [`RedisQueue::run`] for a request on `shard`, followed by a `WAIT`
    /// for `queue.redis.replicas_ack` replicas when `durable` says so.
    async fn run_on<T: FromRedisValue>(
        &self,
        what: &str,
        request: Request<'_>,
        shard: usize,
        durable: Option<Durable<'_>>,
    ) -> Result<T, QueueError> {
        let result = self.send(what, request, durable).await;
        if result.is_err() && request.writes() {
            self.failed_shard.store(shard, Ordering::Relaxed);
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
    /// producer's caller learns the push may or may not be in. On a cluster
    /// the cluster client has reconnected and retried a broken request
    /// already, so only a wrong-server answer is sent again.
    ///
    /// With `durable` and `queue.redis.replicas_ack`, a `WAIT` follows on
    /// the same connection; fewer replicas than asked within the timeout is
    /// [`QueueError::Unavailable`] for a strict request (the write is on the
    /// primary but may not survive a failover), a warning otherwise.
    async fn send<T: FromRedisValue>(
        &self,
        what: &str,
        request: Request<'_>,
        durable: Option<Durable<'_>>,
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
                Ok(value) => {
                    if let Some(d) = durable.filter(|_| self.replicas_ack > 0) {
                        self.await_replicas(what, &mut conn, d).await?;
                    }
                    return Ok(value);
                }
                Err(e) => {
                    self.shared.failed(slot, generation, &e).await;
                    // A reply that timed out may come: the request may have
                    // run, so it is not sent again (the caller decides).
                    let broken = (e.is_connection_dropped() || e.is_io_error())
                        && !e.is_timeout()
                        && !conn.is_cluster();
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

    /// The `WAIT` after a durable write (see [`RedisQueue::send`]).
    async fn await_replicas(
        &self,
        what: &str,
        conn: &mut Conn,
        d: Durable<'_>,
    ) -> Result<(), QueueError> {
        let n = self.replicas_ack;
        let acked = conn
            .wait_replicas(d.key, n, self.replicas_ack_timeout)
            .await
            .map_err(|e| redis_error(&format!("{what} (WAIT for replicas)"), e))?;
        if acked >= n {
            return Ok(());
        }
        let message = format!(
            "redis {what}: {acked} of {n} replicas acknowledged within {} ms; the write is on the primary but may not survive a failover",
            self.replicas_ack_timeout.as_millis()
        );
        if d.strict {
            return Err(QueueError::Unavailable(message));
        }
        warn!("{message}");
        Ok(())
    }

    /// Pushes the wake marker to shard 0 after a push to `shard` found its
    /// ready list empty (`redis/wake.lua`). A failure is only logged: the
    /// job is in, and receivers sweep every shard at least every
    /// [`QUIET_SWEEP`] and at each receive that did not skip its sweep.
    async fn wake(&self, shard: usize) {
        if shard == 0 {
            return;
        }
        let mut call = self.scripts.wake.prepare_invoke();
        call.key(&self.keys.ready);
        if let Err(e) = self.run::<i64>("wake", Request::Script(&call)).await {
            debug!(error = %e, "redis wake marker not pushed; receivers find the job by their next sweep");
        }
    }

    /// After a failed push to `shard`: it may be in all the same (its
    /// reply timed out, or too few replicas acknowledged it), so the wake
    /// marker is pushed as after a push (a spare one costs one sweep).
    async fn wake_anyway(&self, shard: usize, e: QueueError) -> QueueError {
        if matches!(e, QueueError::Unavailable(_)) {
            self.wake(shard).await;
        }
        e
    }

    /// Pushes ready and delayed jobs, with `once` (a key and its window in
    /// ms) only if that key is not set; in one round trip either way. A
    /// keyed push goes to its key's shard ([`shard_of_key`]), where its
    /// marker is; any other to the next shard in turn.
    async fn push_keyed(
        &self,
        once: Option<(&str, u128)>,
        messages: Vec<Outgoing>,
    ) -> Result<Once, QueueError> {
        if messages.is_empty() {
            return Ok(Once::Pushed);
        }
        let shard = match once {
            Some((key, _)) => shard_of_key(key, self.shards()),
            None => self.next_shard(),
        };
        let keys = &self.shard_keys[shard];
        let durable = Some(Durable {
            key: &keys.ready,
            strict: true,
        });
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
            lpush.arg(&keys.ready).arg(&ready);
            let len: usize = match self
                .run_on("push", Request::Cmd(&lpush), shard, durable)
                .await
            {
                Ok(len) => len,
                Err(e) => return Err(self.wake_anyway(shard, e).await),
            };
            if len == ready.len() {
                self.wake(shard).await;
            }
            return Ok(Once::Pushed);
        }
        let marker = once.map(|(key, _)| key_for(&self.shard_tags[shard], &format!("once:{key}")));
        let window_ms = once.map_or(0, |(_, w)| w);
        let mut call = self.scripts.push.prepare_invoke();
        call.key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.seq)
            .key(marker.as_deref().unwrap_or(&keys.seq))
            .arg(window_ms.to_string())
            .arg(ready.len())
            .arg(if shard == 0 { "1" } else { "0" })
            .arg(&ready);
        for (ms, body) in &delayed {
            call.arg(ms).arg(body);
        }
        let (pushed, wake): (i64, i64) = match self
            .run_on("push", Request::Script(&call), shard, durable)
            .await
        {
            Ok(answer) => answer,
            Err(e) => return Err(self.wake_anyway(shard, e).await),
        };
        if wake == 1 {
            self.wake(shard).await;
        }
        Ok(if pushed < 0 {
            Once::Duplicate
        } else {
            Once::Pushed
        })
    }

    /// One `push_each` script call for `groups`, all of shard `shard`.
    async fn push_each_on(&self, shard: usize, groups: &[&Keyed]) -> Vec<Result<Once, QueueError>> {
        let keys = &self.shard_keys[shard];
        let tag = &self.shard_tags[shard];
        let mut call = self.scripts.push_each.prepare_invoke();
        call.key(&keys.ready);
        for g in groups {
            // A window of 0 is no key: the script does not touch it.
            let window = match g.window.as_millis() {
                0 => "0".to_string(),
                ms => ms.min(MAX_DELAY_MS).to_string(),
            };
            call.key(key_for(tag, &format!("once:{}", g.key)))
                .arg(window)
                .arg(g.messages.len());
        }
        for m in groups.iter().flat_map(|g| &g.messages) {
            call.arg(&m.body);
        }
        let durable = Some(Durable {
            key: &keys.ready,
            strict: true,
        });
        match self
            .run_on::<Vec<i64>>("push", Request::Script(&call), shard, durable)
            .await
        {
            Ok(mut pushed) if pushed.len() == groups.len() + 1 => {
                if pushed.pop() == Some(1) {
                    self.wake(shard).await;
                }
                pushed
                    .into_iter()
                    .map(|n| Ok(if n < 0 { Once::Duplicate } else { Once::Pushed }))
                    .collect()
            }
            Ok(pushed) => {
                let e = QueueError::Backend(format!(
                    "redis push: {} answers for {} groups",
                    pushed.len(),
                    groups.len()
                ));
                vec![Err(e); groups.len()]
            }
            Err(e) => {
                let e = self.wake_anyway(shard, e).await;
                vec![Err(e); groups.len()]
            }
        }
    }

    /// After a failed write, checks whether writes work again with a write
    /// that changes nothing (`INCRBY seq 0`) on a shared connection, on the
    /// shard whose write failed; the flag clears only when it succeeds. Any
    /// successful write would not do: a full Redis (`maxmemory`) still
    /// takes acks, which free memory, while it refuses pushes, and `INCRBY`
    /// is refused like a push.
    async fn check_writes(&self) {
        if !self.writes_failing.load(Ordering::Relaxed) {
            return;
        }
        let shard = self.failed_shard.load(Ordering::Relaxed) % self.shards();
        let mut incrby = ::redis::cmd("INCRBY");
        incrby.arg(&self.shard_keys[shard].seq).arg(0);
        match self
            .run_on::<i64>("write check", Request::Cmd(&incrby), shard, None)
            .await
        {
            Ok(_) => self.writes_failing.store(false, Ordering::Relaxed),
            Err(e) => debug!(error = %e, "redis still refuses writes"),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        // The free list stays consistent whatever panicked while holding it.
        self.receivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for one receive: an idle one (`true`) or a new one.
    async fn receiver(&self) -> Result<(Conn, bool), RedisError> {
        if let Some(conn) = self.idle().pop() {
            return Ok((conn, true));
        }
        let conn = self.shared.target.open().await?;
        Ok((conn, false))
    }

    fn release(&self, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() < self.idle_receivers {
            idle.push(conn);
        }
    }

    fn quiet(&self) -> MutexGuard<'_, Option<Instant>> {
        self.quiet_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the receive script once on `shard`: what it claimed, how long
    /// until something there becomes ready by itself, and whether it
    /// dropped a wake marker.
    async fn claim(
        &self,
        conn: &mut Conn,
        shard: usize,
        max: usize,
    ) -> Result<(Vec<Received>, Option<Duration>, bool), RedisError> {
        conn.set_response_timeout(COMMAND_TIMEOUT);
        let keys = &self.shard_keys[shard];
        let (next, first, stamp, bodies, recounts, woke): Claimed = self
            .scripts
            .receive
            .key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.held)
            .key(&keys.leases)
            .key(&keys.seq)
            // The script claims with one variadic HSET/ZADD: keep within Lua's stack.
            .arg(max.min(MAX_CLAIM))
            .arg(self.lease_ms())
            .arg(MOVE_BATCH)
            .invoke_async(conn)
            .await?;
        let got = claimed(first, stamp, bodies, &recounts, shard);
        let next = u64::try_from(next).ok().map(Duration::from_millis);
        Ok((got, next, woke == 1))
    }

    /// Claims up to `max` from the shards in turn, from `first` on, until
    /// `max` are claimed: what was claimed, and the soonest time something
    /// becomes ready by itself in the shards it swept. Shard 0's claim drops
    /// the wake marker; when it did and shards before it were swept already,
    /// a push to one of them may have come after, so (when nothing was
    /// claimed) the sweep runs once more from shard 0.
    async fn sweep(
        &self,
        conn: &mut Conn,
        first: usize,
        max: usize,
    ) -> Result<(Vec<Received>, Option<Duration>), RedisError> {
        let n = self.shards();
        let mut first = first % n;
        loop {
            let mut got = Vec::new();
            let mut next: Option<Duration> = None;
            let mut again = false;
            for i in 0..n {
                let shard = (first + i) % n;
                let (claimed, due, woke) = self.claim(conn, shard, max - got.len()).await?;
                if woke && i > 0 {
                    again = true;
                }
                next = match (next, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let full = claimed.len() >= max - got.len();
                got.extend(claimed);
                if full {
                    // This shard may hold more: wake the receivers that
                    // skip their sweep (see `QUIET_SWEEP`).
                    self.wake(shard).await;
                    break;
                }
            }
            if got.is_empty() && again {
                first = 0;
                continue;
            }
            return Ok((got, next));
        }
    }

    /// Claims, and while nothing comes and `deadline` is ahead, blocks until
    /// `ready` of shard 0 has something (a job, or the wake marker of a push
    /// to another shard) or the next delayed job or lease is due.
    async fn receive_on(
        &self,
        conn: &mut Conn,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<Received>, RedisError> {
        let sharded = self.shards() > 1;
        // With several shards, a receive that follows a quiet one skips the
        // sweep and blocks at once, until what the last sweep knew of falls
        // due (or the marker of a push wakes it).
        let mut skip = if sharded {
            self.quiet().filter(|until| *until > Instant::now())
        } else {
            None
        };
        let mut first = self.next_sweep.fetch_add(1, Ordering::Relaxed);
        loop {
            // `quiet`: until when the next receives may skip their sweep, if
            // the block below ends by its timeout.
            let (got, next, quiet) = match skip.take() {
                Some(until) => (
                    Vec::new(),
                    Some(until.saturating_duration_since(Instant::now())),
                    Some(until),
                ),
                None => {
                    let swept_at = Instant::now();
                    let (got, next) = self.sweep(conn, first, max).await?;
                    let quiet = (sharded && got.is_empty())
                        .then(|| swept_at + next.map_or(QUIET_SWEEP, |n| n.min(QUIET_SWEEP)));
                    (got, next, quiet)
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                if sharded {
                    *self.quiet() = quiet;
                }
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
                // is for the next call, which claims first (or, quiet, blocks
                // first until what it knows of falls due).
                if sharded {
                    *self.quiet() = quiet;
                }
                return Ok(Vec::new());
            }
            // Woken, or something is due: sweep, from shard 0 (which drops
            // the marker) when woken.
            if sharded {
                *self.quiet() = None;
            }
            if woke.is_some() {
                first = 0;
            }
        }
    }

    /// Replays or purges the dead-letter entries `filter` selects in
    /// `shard`, oldest first, in steps of at most [`DLQ_CHUNK`] entries
    /// (`redis/dlq.lua`). The walk covers the entries `dead` held when it
    /// began and no more: entries dead-lettered meanwhile are appended
    /// behind them. When the limit stops it early, what it kept is put back
    /// in front of what it did not reach, so the order of what stays is
    /// unchanged.
    async fn dlq_walk(
        &self,
        shard: usize,
        mode: &str,
        filter: &DlqFilter,
    ) -> Result<usize, QueueError> {
        let keys = &self.shard_keys[shard];
        let limit = filter.limit.unwrap_or(usize::MAX);
        let what = format!("dlq {mode}");
        let (mut done, mut kept) = (0, 0);
        // Entries of the walk not walked yet; `None` until the first step measured it.
        let mut left: Option<usize> = None;
        while done < limit && left != Some(0) {
            let mut call = self.scripts.dlq.prepare_invoke();
            call.key(&keys.dead)
                .key(&keys.ready)
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
            let (taken, walked, len): (usize, usize, usize) = self
                .run_on(&what, Request::Script(&call), shard, None)
                .await?;
            done += taken;
            kept += walked - taken;
            left = Some(left.unwrap_or(len).saturating_sub(walked));
            if walked == 0 {
                break;
            }
        }
        let unwalked = left.unwrap_or(0);
        if kept > 0 && unwalked > 0 {
            self.dlq_restore_order(shard, unwalked).await?;
        }
        if mode == "replay" && done > 0 {
            self.wake(shard).await;
        }
        Ok(done)
    }

    /// Walks every shard with [`RedisQueue::dlq_walk`], the limit shared.
    async fn dlq_walk_all(&self, mode: &str, filter: &DlqFilter) -> Result<usize, QueueError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut done = 0;
        for shard in 0..self.shards() {
            if done >= limit {
                break;
            }
            let mut f = filter.clone();
            if filter.limit.is_some() {
                f.limit = Some(limit - done);
            }
            done += self.dlq_walk(shard, mode, &f).await?;
        }
        Ok(done)
    }

    /// After a walk stopped short, `dead` of `shard` is: the `unwalked`
    /// entries, then what the walk kept (and what was dead-lettered
    /// meanwhile). Moves the shorter of the two parts to the other end, in
    /// steps, so what the walk kept is in front again.
    async fn dlq_restore_order(&self, shard: usize, unwalked: usize) -> Result<(), QueueError> {
        let keys = &self.shard_keys[shard];
        let mut llen = ::redis::cmd("LLEN");
        llen.arg(&keys.dead);
        let len: usize = self
            .run_on("dlq order", Request::Cmd(&llen), shard, None)
            .await?;
        let behind = len.saturating_sub(unwalked);
        let (direction, mut n) = if behind <= unwalked {
            ("back", behind)
        } else {
            ("forward", unwalked)
        };
        while n > 0 {
            let step = n.min(DLQ_CHUNK);
            let mut call = self.scripts.dlq.prepare_invoke();
            call.key(&keys.dead)
                .key(&keys.ready)
                .arg("rotate")
                .arg(direction)
                .arg("")
                .arg(0)
                .arg(step)
                .arg(0);
            let (_, moved, _): (usize, usize, usize) = self
                .run_on("dlq order", Request::Script(&call), shard, None)
                .await?;
            if moved == 0 {
                break;
            }
            n -= step;
        }
        Ok(())
    }

    /// `handles` by shard (a handle of shard k > 0 ends in `@k`), with the
    /// bare tokens the scripts know.
    fn by_shard<'h>(&self, handles: &'h [Handle]) -> BTreeMap<usize, Vec<&'h str>> {
        let mut out: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for h in handles {
            let (shard, token) = match h.0.rsplit_once('@') {
                Some((token, shard)) => match shard.parse::<usize>() {
                    Ok(s) if s < self.shards() => (s, token),
                    _ => (0, h.0.as_str()),
                },
                None => (0, h.0.as_str()),
            };
            out.entry(shard).or_default().push(token);
        }
        out
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
        let window_ms = window.as_millis().clamp(1, MAX_DELAY_MS);
        self.push_keyed(Some((key, window_ms)), messages).await
    }

    /// One script call for all the groups of a shard (`redis/push_each.lua`);
    /// a group goes to its key's shard. A group with a delayed message goes
    /// through [`QueuePush::push_once`] alone.
    async fn push_once_each(&self, groups: Vec<Keyed>) -> Vec<Result<Once, QueueError>> {
        if groups
            .iter()
            .any(|g| g.messages.iter().any(|m| !m.delay.is_zero()))
        {
            return crate::push_each_alone(self, groups).await;
        }
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            by_shard
                .entry(shard_of_key(&g.key, self.shards()))
                .or_default()
                .push(i);
        }
        let mut answers: Vec<Option<Result<Once, QueueError>>> = vec![None; groups.len()];
        for (shard, members) in by_shard {
            let part: Vec<&Keyed> = members.iter().map(|&i| &groups[i]).collect();
            for (i, answer) in members
                .into_iter()
                .zip(self.push_each_on(shard, &part).await)
            {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(QueueError::Backend("redis push: no answer".into()))))
            .collect()
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
                // A cluster connection reconnects its nodes by itself: it
                // stays (a new one knows only the configured nodes).
                Err(e) if conn.is_cluster() && !is_wrong_server(&e) => {
                    self.release(conn);
                    return Err(redis_error("receive", e));
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
        let mut removed = 0;
        for (shard, tokens) in self.by_shard(handles) {
            let keys = &self.shard_keys[shard];
            let mut call = self.scripts.ack.prepare_invoke();
            call.key(&keys.held).key(&keys.leases).arg(&tokens);
            // A lost ack only means a delivery again: too few replicas is logged.
            let durable = Some(Durable {
                key: &keys.held,
                strict: false,
            });
            removed += self
                .run_on::<usize>("ack", Request::Script(&call), shard, durable)
                .await?;
        }
        Ok(handles.len().saturating_sub(removed))
    }

    async fn extend(&self, handles: &[Handle]) -> Result<Vec<Handle>, QueueError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let mut gone_all = Vec::new();
        for (shard, tokens) in self.by_shard(handles) {
            let keys = &self.shard_keys[shard];
            let mut call = self.scripts.extend.prepare_invoke();
            call.key(&keys.leases).arg(self.lease_ms()).arg(&tokens);
            let gone: Vec<String> = self
                .run_on("extend", Request::Script(&call), shard, None)
                .await?;
            gone_all.extend(
                gone.into_iter()
                    .map(|t| Handle(if shard > 0 { format!("{t}@{shard}") } else { t })),
            );
        }
        Ok(gone_all)
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
        let shard = self.next_shard();
        let keys = &self.shard_keys[shard];
        let mut rpush = ::redis::cmd("RPUSH");
        rpush.arg(&keys.dead).arg(&json);
        let durable = Some(Durable {
            key: &keys.dead,
            strict: true,
        });
        self.run_on::<()>("dead letter", Request::Cmd(&rpush), shard, durable)
            .await
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
    /// Shard by shard, each oldest first.
    async fn dlq_entries(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut skip = filter.offset;
        for (shard, keys) in self.shard_keys.iter().enumerate() {
            let mut start: isize = 0;
            loop {
                let mut lrange = ::redis::cmd("LRANGE");
                lrange.arg(&keys.dead).arg(start).arg(start + DLQ_PAGE - 1);
                let page: Vec<Vec<u8>> = self
                    .run_on("dlq list", Request::Cmd(&lrange), shard, None)
                    .await?;
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
                            warn!(key = %keys.dead, error = %e, "skipping an unreadable dead-letter entry")
                        }
                    }
                }
                if n < DLQ_PAGE.unsigned_abs() {
                    break;
                }
                start += DLQ_PAGE;
            }
        }
        Ok(out)
    }

    async fn dlq_replay(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        self.dlq_walk_all("replay", filter).await
    }

    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        self.dlq_walk_all("purge", filter).await
    }

    /// Summed over the shards, one pipeline (one slot) per shard. With one
    /// shard a wake marker in `ready` counts as a job until a receive drops
    /// it (as it always did); with several it is not counted.
    async fn depth(&self) -> Result<Depth, QueueError> {
        let mut total = Depth {
            ready: 0,
            delayed: 0,
            held: 0,
            dead: 0,
        };
        for (shard, keys) in self.shard_keys.iter().enumerate() {
            let mut pipe = ::redis::pipe();
            pipe.cmd("LLEN")
                .arg(&keys.ready)
                .cmd("ZCARD")
                .arg(&keys.delayed)
                .cmd("HLEN")
                .arg(&keys.held)
                .cmd("LLEN")
                .arg(&keys.dead);
            // With several shards the wake marker comes and goes with pushes
            // to the others: shard 0's oldest entry, it is not counted.
            let discount = shard == 0 && self.shards() > 1;
            if discount {
                pipe.cmd("LINDEX").arg(&keys.ready).arg(-1);
            }
            let values: Vec<Value> = self
                .run_on("depth", Request::Pipe(&pipe), shard, None)
                .await?;
            let count = |i: usize| {
                values
                    .get(i)
                    .and_then(|v| u64::from_redis_value(v.clone()).ok())
                    .unwrap_or(0)
            };
            let (mut ready, delayed, held, dead) = (count(0), count(1), count(2), count(3));
            if discount
                && matches!(values.get(4), Some(Value::BulkString(b)) if b.as_slice() == b"\0wake")
            {
                ready = ready.saturating_sub(1);
            }
            total.ready += ready;
            total.delayed += delayed;
            total.held += held;
            total.dead += dead;
        }
        Ok(total)
    }
}

/// What `receive.lua` returns: (ms until something is ready by itself or -1,
/// first, stamp, bodies, recounts, woke); see [`claimed`].
type Claimed = (i64, i64, i64, Vec<Vec<u8>>, Vec<i64>, i64);

/// The jobs of one claim from `receive.lua`'s answer: body number `i`,
/// counted from one, is held under the token `"<first + i>-<stamp>"`, and
/// `recounts` holds `(i, receive count)` pairs for the bodies received
/// before (the others are on their first receive). A token of a shard past
/// the first carries `@<shard>`, so that acks and extensions find its keys.
fn claimed(
    first: i64,
    stamp: i64,
    bodies: Vec<Vec<u8>>,
    recounts: &[i64],
    shard: usize,
) -> Vec<Received> {
    let mut got: Vec<Received> = bodies
        .into_iter()
        .zip(1..)
        .map(|(body, i)| {
            // A body that is not UTF-8 reaches the worker with its bytes
            // (rather than failing every receive): the worker dead-letters it.
            let (body, not_utf8) = match String::from_utf8(body) {
                Ok(text) => (text, None),
                Err(e) => {
                    let bytes = e.into_bytes();
                    (String::from_utf8_lossy(&bytes).into_owned(), Some(bytes))
                }
            };
            let token = if shard > 0 {
                format!("{}-{stamp}@{shard}", first + i)
            } else {
                format!("{}-{stamp}", first + i)
            };
            Received {
                handle: Handle(token),
                body,
                receive_count: 1,
                not_utf8,
            }
        })
        .collect();
    for pair in recounts.chunks_exact(2) {
        if let Some(r) = usize::try_from(pair[0] - 1)
            .ok()
            .and_then(|i| got.get_mut(i))
        {
            r.receive_count = u32::try_from(pair[1]).unwrap_or(u32::MAX);
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_jobs_get_their_tokens_and_counts() {
        let bodies = vec![b"{}".to_vec(), b"\xffx".to_vec(), b"[1]".to_vec()];
        let got = claimed(41, 1700, bodies, &[2, 3], 2);
        let seen: Vec<(&str, &str, u32)> = got
            .iter()
            .map(|r| (r.handle.0.as_str(), r.body.as_str(), r.receive_count))
            .collect();
        assert_eq!(
            seen,
            [
                ("42-1700@2", "{}", 1),
                ("43-1700@2", "\u{fffd}x", 3),
                ("44-1700@2", "[1]", 1)
            ]
        );
        assert_eq!(got[1].not_utf8.as_deref(), Some(&b"\xffx"[..]));
        assert!(got[0].not_utf8.is_none());
        assert_eq!(claimed(0, 5, Vec::new(), &[], 0).len(), 0);
        assert_eq!(
            claimed(9, 5, vec![b"a".to_vec()], &[], 0)[0].handle.0,
            "10-5"
        );
    }
}
