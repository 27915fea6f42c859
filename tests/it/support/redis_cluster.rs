//! A Redis Cluster of three primaries and three replicas (or more), six
//! plain `redis-server --cluster-enabled yes` processes on free loopback
//! ports in a temporary directory, joined by `redis-cli --cluster create
//! --cluster-replicas 1`. A node's failure is noticed after
//! [`NODE_TIMEOUT_MS`], so a SIGKILLed primary's replica takes over within
//! a few seconds. Every node is killed and the directory removed on drop.

use super::process::temp_dir;
use super::redis_server::{Reply, command_calls, command_on};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster-node-timeout`: how long a node may be silent before it counts as failing.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Runs redis-server with the arguments given and kills it with the signal
/// read from stdin (SIGKILL when stdin just closes: the test process ended,
/// even by an abort, so no node outlives it), then waits for it.
const GUARD: &str = r#"redis-server "$@" &
pid=$!
read sig
kill -s "${sig:-KILL}" "$pid" 2>/dev/null
wait "$pid""#;

struct Node {
    port: u16,
    /// The guard (see [`GUARD`]) and its stdin.
    child: Option<(Child, ChildStdin)>,
}

impl Node {
    /// A cluster-enabled node in `dir` that answers `PING`. A free port
    /// can be taken by another test between the check and the node's
    /// bind (the node then exits at once): the node is started again on
    /// another port, up to three times.
    fn start_answering(dir: &Path) -> Node {
        for _ in 0..3 {
            let mut node = Node::spawn(dir);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if matches!(command_on(node.port, &["PING"]), Ok(Reply::Simple(ref s)) if s == "PONG")
                {
                    return node;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            node.kill();
        }
        panic!(
            "redis cluster: no node answered on three ports; logs in {}",
            dir.display()
        );
    }

    fn spawn(dir: &Path) -> Node {
        let port = free_bus_port();
        let mut guard = Command::new("sh")
            .args(["-c", GUARD, "sh"])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--logfile", &format!("redis-{port}.log")])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts redis-server (is it installed? `make test-deps`)");
        let stdin = guard.stdin.take().expect("the guard's stdin");
        Node {
            port,
            child: Some((guard, stdin)),
        }
    }

    /// Has the guard SIGKILL the node, and waits until both exited.
    fn kill(&mut self) {
        if let Some((mut guard, mut stdin)) = self.child.take() {
            let _ = writeln!(stdin, "KILL");
            drop(stdin);
            let _ = guard.wait();
        }
    }
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Six nodes, three primaries with a replica each; returns when every
    /// node says `cluster_state:ok` and every replica's link is up.
    /// Panics when the cluster does not form.
    pub fn start() -> RedisCluster {
        Self::start_with(1)
    }

    /// Three primaries with `replicas` replicas each (as [`start`](Self::start)).
    pub fn start_with(replicas: usize) -> RedisCluster {
        let dir = temp_dir("redis-cluster");
        let nodes = (0..3 * (1 + replicas))
            .map(|_| Node::start_answering(&dir))
            .collect();
        let cluster = RedisCluster { nodes, dir };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn wait(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < limit,
                "redis cluster: {what} not within {limit:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node says `cluster_state:ok`, three
    /// primaries serve all slots, and every replica's link is up.
    pub fn wait_healthy(&self, limit: Duration) {
        self.wait("healthy", limit, || {
            self.running().all(|port| {
                info(port, "CLUSTER", "INFO", "cluster_state").as_deref() == Some("ok")
                    && (self.role(port).as_deref() == Some("master")
                        || info(port, "INFO", "replication", "master_link_status").as_deref()
                            == Some("up"))
            }) && self.primaries().len() == 3
        });
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// The seed URLs of every node, `redis://127.0.0.1:<port>`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `master` or `slave`, from `INFO replication`, of a running node.
    pub fn role(&self, port: u16) -> Option<String> {
        info(port, "INFO", "replication", "role")
    }

    /// The ports of the running primaries.
    pub fn primaries(&self) -> Vec<u16> {
        self.running()
            .filter(|p| self.role(*p).as_deref() == Some("master"))
            .collect()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> i64 {
        let port = self.running().next().expect("a running node");
        let Ok(Reply::Int(slot)) = command_on(port, &["CLUSTER", "KEYSLOT", key]) else {
            panic!("CLUSTER KEYSLOT {key}");
        };
        slot
    }

    /// The port of the primary serving `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.running().next().expect("a running node");
        let slot = self.keyslot(key);
        let Ok(Reply::Array(Some(ranges))) = command_on(port, &["CLUSTER", "SLOTS"]) else {
            panic!("CLUSTER SLOTS");
        };
        for r in ranges {
            let Reply::Array(Some(r)) = r else { continue };
            let (Some(Reply::Int(from)), Some(Reply::Int(to)), Some(Reply::Array(Some(primary)))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if (*from..=*to).contains(&slot)
                && let Some(Reply::Int(p)) = primary.get(1)
            {
                return *p as u16;
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        command_on(port, &["CLUSTER", "MYID"])
            .ok()
            .and_then(|r| r.text())
            .unwrap_or_else(|| panic!("CLUSTER MYID on {port}"))
    }

    /// Moves `slot` from the primary on `from` to the primary on `to` by
    /// the slot migration protocol, as `redis-cli --cluster reshard` does:
    /// `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the
    /// source, then one `MIGRATE … KEYS key` at a time, with `pause` after
    /// `SETSLOT MIGRATING` and after each (clients meanwhile get `ASK` for
    /// keys not on the source, `TRYAGAIN` for a multi-key request split
    /// between the two), and last `SETSLOT
    /// NODE` on the target, the source and the other primaries (`MOVED`
    /// from then on). Returns the number of keys moved.
    pub fn migrate_slot(&self, slot: i64, from: u16, to: u16, pause: Duration) -> usize {
        let slot = slot.to_string();
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let ok = |port: u16, args: &[&str]| match command_on(port, args) {
            Ok(Reply::Simple(s)) if s == "OK" || s == "NOKEY" => {}
            r => panic!("{args:?} on {port}: {r:?}"),
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        // Requests for keys not on the source are sent to the target already.
        std::thread::sleep(pause);
        let mut moved = 0;
        let start = Instant::now();
        loop {
            let Ok(Reply::Array(Some(keys))) =
                command_on(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1"])
            else {
                panic!("CLUSTER GETKEYSINSLOT {slot} on {from}");
            };
            let Some(key) = keys.first().and_then(|k| k.text()) else {
                break;
            };
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "slot {slot}: keys still on {from} after 60 s ({moved} moved)"
            );
            let to_port = to.to_string();
            ok(
                from,
                &[
                    "MIGRATE",
                    "127.0.0.1",
                    &to_port,
                    "",
                    "0",
                    "5000",
                    "KEYS",
                    &key,
                ],
            );
            moved += 1;
            std::thread::sleep(pause);
        }
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for port in self.primaries() {
            if port != from && port != to {
                ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        moved
    }

    /// SIGKILLs the node on `port`, as a crash would, and waits until it exited.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster");
        node.kill();
    }

    /// Commands called on the node since it started (`INFO commandstats`),
    /// without `INFO` itself, the replicas' `REPLCONF ACK` (one a second
    /// each) and `CLUSTER …` (the harness's own and the client's topology
    /// reads).
    pub fn command_calls(&self, port: u16) -> BTreeMap<String, u64> {
        let text = command_on(port, &["INFO", "commandstats"])
            .ok()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let mut calls = command_calls(&text).expect("INFO commandstats");
        calls.retain(|name, _| name != "replconf" && !name.starts_with("cluster"));
        calls
    }
}

/// A free loopback port P whose cluster-bus port P + 10000 is free too
/// (an ephemeral port plus 10000 may pass 65535), from 20000–29999.
fn free_bus_port() -> u16 {
    use std::net::TcpListener;
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut candidate =
        20_000 + (hookq_core::new_id("p").bytes().map(u64::from).sum::<u64>() ^ seed) % 10_000;
    for _ in 0..10_000 {
        let p = candidate as u16;
        if let (Ok(_a), Ok(_b)) = (
            TcpListener::bind(("127.0.0.1", p)),
            TcpListener::bind(("127.0.0.1", p + 10_000)),
        ) {
            return p;
        }
        candidate = 20_000 + (candidate - 20_000 + 7) % 10_000;
    }
    panic!("no free port pair for a cluster node");
}

/// A field of `INFO`-style text returned by `cmd sub` on `port`.
fn info(port: u16, cmd: &str, sub: &str, field: &str) -> Option<String> {
    let text = command_on(port, &[cmd, sub]).ok()?.text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
