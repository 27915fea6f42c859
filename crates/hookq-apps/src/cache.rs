//! The caching layer every database registry shares: a [`Source`] reads one
//! record by id or key; [`CachedApps`] compiles it with the config file's
//! rules ([`hookq_core::app_from_record`]) and keeps the result.
//!
//! - a found app (or an app whose `webhooks` is invalid) is kept for the TTL;
//! - an unknown id or key is kept for `min(ttl, 5 s)`, so a flood of jobs for
//!   a deleted app does not hammer the database; at most [`MAX_UNKNOWN`] of
//!   them are kept per map (ids, keys), so jobs or requests naming random ids
//!   cannot grow the cache without bound: at the bound, those whose time is
//!   up are dropped, and while it stays full further unknowns are not kept
//!   (each asks the database);
//! - when the database fails, the cached answer is served even if expired
//!   (and for a second after a failure the database is not asked again);
//!   with none, the lookup is [`LookupError::Unavailable`] and
//!   [`AppRegistry::is_ready`] is false until a lookup succeeds again.
//!
//! Fetches are made one at a time, and a lookup that waited for another
//! fetch checks the cache again first, so a burst for one expired app makes
//! one query.

use async_trait::async_trait;
use hookq_core::{App, AppRegistry, Config, LookupError, app_from_record};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an unknown id or key is remembered, at most.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);

/// Most unknown ids (and, apart, keys) kept at once.
pub const MAX_UNKNOWN: usize = 10_000;

/// After a failed query, how long lookups answer from the cache (or
/// `Unavailable`) without asking the database again, so that a flood of jobs
/// does not queue up behind connection timeouts.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a lookup is by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The app's `id`.
    Id(&'a str),
    /// The app's `key`.
    Key(&'a str),
}

/// One row of Sockudo's applications table, as far as hookq reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `id`.
    pub id: String,
    /// `key`.
    pub key: String,
    /// `secret`.
    pub secret: String,
    /// `enabled`.
    pub enabled: bool,
    /// `webhooks` as JSON text (none when NULL or absent).
    pub webhooks: Option<String>,
}

/// Why a database could not answer a lookup.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// PostgreSQL or MySQL failed (connection, pool timeout, query).
    #[cfg(any(feature = "pgsql", feature = "mysql"))]
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// DynamoDB failed; the SDK's error with its context, as text (its
    /// error types differ per operation).
    #[error("{0}")]
    DynamoDb(String),
    /// Not asked: the last query failed less than a second ago.
    #[error("the last query failed less than a second ago")]
    Resting,
    /// A test source's failure.
    #[cfg(test)]
    #[error("{0}")]
    Test(&'static str),
}

/// A database that can read one app record.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The record, `None` when there is none; `Err` when the database cannot answer.
    async fn fetch(&self, by: Lookup<'_>) -> Result<Option<Record>, SourceError>;

    /// A name for logs (`postgres`, `mysql`, `dynamodb`).
    fn name(&self) -> &'static str;
}

#[derive(Clone)]
enum Answer {
    App(Arc<App>),
    Invalid(String),
    Unknown,
}

#[derive(Clone)]
struct Entry {
    answer: Answer,
    fetched: Instant,
}

impl Entry {
    fn is_unknown(&self) -> bool {
        matches!(self.answer, Answer::Unknown)
    }
}

/// Entries by id or by key, counting the unknown ones to bound them.
#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    unknown: usize,
    /// When the expired unknowns were last dropped.
    swept: Option<Instant>,
}

impl Map {
    fn get(&self, k: &str) -> Option<&Entry> {
        self.entries.get(k)
    }

    /// Keeps `entry` under `k`; an unknown one only while fewer than
    /// [`MAX_UNKNOWN`] are kept (after dropping, at most once per
    /// `unknown_ttl`, those kept longer than that).
    fn insert(&mut self, k: String, entry: Entry, unknown_ttl: Duration) {
        let replaces_unknown = self.entries.get(&k).map(Entry::is_unknown);
        if entry.is_unknown() && replaces_unknown.is_none() && self.unknown >= MAX_UNKNOWN {
            if self.swept.is_none_or(|t| t.elapsed() >= unknown_ttl) {
                self.entries
                    .retain(|_, e| !(e.is_unknown() && e.fetched.elapsed() >= unknown_ttl));
                self.unknown = self.entries.values().filter(|e| e.is_unknown()).count();
                self.swept = Some(Instant::now());
            }
            if self.unknown >= MAX_UNKNOWN {
                return;
            }
        }
        if entry.is_unknown() {
            self.unknown += 1;
        }
        self.entries.insert(k, entry);
        if replaces_unknown == Some(true) {
            self.unknown -= 1;
        }
    }
}

#[derive(Default)]
struct Maps {
    by_id: Map,
    by_key: Map,
}

impl Maps {
    fn map(&mut self, by: Lookup<'_>) -> (&mut Map, String) {
        match by {
            Lookup::Id(id) => (&mut self.by_id, id.to_string()),
            Lookup::Key(key) => (&mut self.by_key, key.to_string()),
        }
    }
}

/// An [`AppRegistry`] over a database [`Source`], with a cache.
pub struct CachedApps<S> {
    source: S,
    config: Arc<Config>,
    ttl: Duration,
    maps: Mutex<Maps>,
    fetching: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    database_down: AtomicBool,
    last_failure: Mutex<Option<Instant>>,
}

impl<S: Source> CachedApps<S> {
    /// A registry reading `source`, compiling apps with `config`'s defaults, keeping each for `ttl`.
    pub fn new(source: S, config: Arc<Config>, ttl: Duration) -> Self {
        Self {
            source,
            config,
            ttl,
            maps: Mutex::new(Maps::default()),
            fetching: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(true),
            database_down: AtomicBool::new(false),
            last_failure: Mutex::new(None),
        }
    }

    fn cached(&self, by: Lookup<'_>) -> Option<Entry> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let (map, k) = maps.map(by);
        map.get(&k).cloned()
    }

    fn unknown_ttl(&self) -> Duration {
        self.ttl.min(UNKNOWN_TTL)
    }

    fn fresh(&self, entry: &Entry) -> bool {
        let ttl = match entry.answer {
            Answer::Unknown => self.unknown_ttl(),
            _ => self.ttl,
        };
        entry.fetched.elapsed() < ttl
    }

    fn store(&self, by: Lookup<'_>, answer: &Answer, id: Option<&str>, key: Option<&str>) {
        let entry = Entry {
            answer: answer.clone(),
            fetched: Instant::now(),
        };
        let unknown_ttl = self.unknown_ttl();
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let (map, k) = maps.map(by);
        map.insert(k, entry.clone(), unknown_ttl);
        // A found record answers both ways.
        if let Some(id) = id {
            maps.by_id
                .insert(id.to_string(), entry.clone(), unknown_ttl);
        }
        if let Some(key) = key {
            maps.by_key.insert(key.to_string(), entry, unknown_ttl);
        }
    }

    fn compile(&self, record: &Record) -> Answer {
        let webhooks = match record.webhooks.as_deref().map(serde_json::from_str) {
            None => Ok(serde_json::Value::Null),
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(format!("webhooks: not valid JSON ({e})")),
        };
        let compiled = webhooks.and_then(|w| {
            app_from_record(
                &record.id,
                &record.key,
                &record.secret,
                record.enabled,
                &w,
                &self.config,
            )
            .map_err(|problems| {
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        });
        match compiled {
            Ok(app) => Answer::App(Arc::new(app)),
            Err(reason) => {
                // Logged once per cache period: the answer is kept that long.
                tracing::warn!(
                    app = %record.id,
                    source = self.source.name(),
                    %reason,
                    "app has an invalid configuration; its jobs are dead-lettered"
                );
                Answer::Invalid(reason)
            }
        }
    }

    fn answer(&self, by: Lookup<'_>, answer: Answer) -> Result<Arc<App>, LookupError> {
        match answer {
            Answer::App(app) => Ok(app),
            Answer::Invalid(reason) => Err(LookupError::Invalid {
                id: match by {
                    Lookup::Id(id) | Lookup::Key(id) => id.to_string(),
                },
                reason,
            }),
            Answer::Unknown => Err(LookupError::Unknown(match by {
                Lookup::Id(s) | Lookup::Key(s) => s.to_string(),
            })),
        }
    }

    async fn lookup(&self, by: Lookup<'_>) -> Result<Arc<App>, LookupError> {
        if let Some(entry) = self.cached(by).filter(|e| self.fresh(e)) {
            return self.answer(by, entry.answer);
        }
        let _turn = self.fetching.lock().await;
        // Another lookup may have fetched it while this one waited.
        if let Some(entry) = self.cached(by).filter(|e| self.fresh(e)) {
            return self.answer(by, entry.answer);
        }
        let failed_recently = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
        let fetched = if failed_recently {
            Err(SourceError::Resting)
        } else {
            self.source.fetch(by).await
        };
        match fetched {
            Ok(found) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if self.database_down.swap(false, Ordering::Relaxed) {
                    tracing::info!(source = self.source.name(), "app database answers again");
                }
                self.ready.store(true, Ordering::Relaxed);
                let answer = match &found {
                    Some(record) => self.compile(record),
                    None => Answer::Unknown,
                };
                let (id, key) = match &found {
                    Some(r) => (Some(r.id.as_str()), Some(r.key.as_str())),
                    None => (None, None),
                };
                self.store(by, &answer, id, key);
                match (by, &answer, &found) {
                    // The reason names the app by id, whatever it was looked up by.
                    (Lookup::Key(_), Answer::Invalid(reason), Some(r)) => {
                        Err(LookupError::Invalid {
                            id: r.id.clone(),
                            reason: reason.clone(),
                        })
                    }
                    _ => self.answer(by, answer),
                }
            }
            Err(error) => {
                if !failed_recently {
                    *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                }
                if !self.database_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        source = self.source.name(),
                        %error,
                        "app database unavailable; cached apps are served, jobs of others wait in the queue"
                    );
                }
                match self.cached(by) {
                    Some(stale) => {
                        self.ready.store(true, Ordering::Relaxed);
                        self.answer(by, stale.answer)
                    }
                    None => {
                        self.ready.store(false, Ordering::Relaxed);
                        Err(LookupError::Unavailable(format!(
                            "{}: {error}",
                            self.source.name()
                        )))
                    }
                }
            }
        }
    }
}

#[async_trait]
impl<S: Source> AppRegistry for CachedApps<S> {
    async fn app(&self, id: &str) -> Result<Arc<App>, LookupError> {
        self.lookup(Lookup::Id(id)).await
    }

    async fn app_by_key(&self, key: &str) -> Result<Arc<App>, LookupError> {
        self.lookup(Lookup::Key(key)).await
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Fake {
        rows: Mutex<HashMap<String, Record>>,
        down: AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Source for Arc<Fake> {
        async fn fetch(&self, by: Lookup<'_>) -> Result<Option<Record>, SourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::Test("connection refused"));
            }
            let rows = self.rows.lock().unwrap();
            Ok(match by {
                Lookup::Id(id) => rows.get(id).cloned(),
                Lookup::Key(k) => rows.values().find(|r| r.key == k).cloned(),
            })
        }
        fn name(&self) -> &'static str {
            "fake"
        }
    }

    fn record(id: &str, webhooks: &str) -> Record {
        Record {
            id: id.into(),
            key: format!("{id}-key"),
            secret: "s".into(),
            enabled: true,
            webhooks: Some(webhooks.into()),
        }
    }

    const HOOK: &str = r#"[{"url": "http://127.0.0.1:1/h", "event_types": ["channel_occupied"]}]"#;

    fn registry(ttl: Duration) -> (Arc<Fake>, CachedApps<Arc<Fake>>) {
        let fake = Arc::new(Fake::default());
        let config = Arc::new(Config::with_apps(Vec::new()));
        (fake.clone(), CachedApps::new(fake, config, ttl))
    }

    #[tokio::test]
    async fn caches_apps_and_unknowns_and_serves_stale_copies_when_down() {
        let (fake, r) = registry(Duration::from_millis(200));
        fake.rows
            .lock()
            .unwrap()
            .insert("a".into(), record("a", HOOK));
        assert_eq!(r.app("a").await.unwrap().endpoints.len(), 1);
        assert_eq!(r.app_by_key("a-key").await.unwrap().id, "a");
        assert_eq!(r.app("a").await.unwrap().id, "a");
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            1,
            "one query for id and key"
        );
        assert_eq!(
            r.app("gone").await.unwrap_err(),
            LookupError::Unknown("gone".into())
        );
        assert!(r.app("gone").await.is_err());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "unknown cached");

        tokio::time::sleep(Duration::from_millis(250)).await;
        fake.down.store(true, Ordering::SeqCst);
        assert_eq!(r.app("a").await.unwrap().id, "a", "stale copy while down");
        assert!(r.is_ready());
        assert!(matches!(
            r.app("never").await,
            Err(LookupError::Unavailable(_))
        ));
        assert!(!r.is_ready());
        let calls = fake.calls.load(Ordering::SeqCst);
        assert!(matches!(
            r.app("never").await,
            Err(LookupError::Unavailable(_))
        ));
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls,
            "no query right after a failure"
        );
        fake.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        assert!(r.app("never").await.is_err());
        assert!(r.is_ready(), "answers again after the pause");
    }

    #[tokio::test]
    async fn an_invalid_record_names_the_app_and_the_path() {
        let (fake, r) = registry(Duration::from_secs(60));
        let bad = r#"[{"url": "http://x/h", "event_types": ["channel_occupied"]}, {"url": "http://x/h", "event_types": ["bogus"]}]"#;
        fake.rows
            .lock()
            .unwrap()
            .insert("b".into(), record("b", bad));
        fake.rows
            .lock()
            .unwrap()
            .insert("c".into(), record("c", "{not json"));
        match r.app_by_key("b-key").await {
            Err(LookupError::Invalid { id, reason }) => {
                assert_eq!(id, "b");
                assert!(reason.contains("webhooks[1].event_types[0]"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match r.app("c").await {
            Err(LookupError::Invalid { reason, .. }) => assert!(reason.contains("not valid JSON")),
            other => panic!("{other:?}"),
        }
    }

    /// Issue 14, item 8: jobs (or ingest requests) naming random app ids
    /// or keys must not make the cache grow without bound. Before the fix
    /// every unknown id stayed in the cache for good.
    #[tokio::test]
    async fn random_ids_do_not_grow_the_cache_without_bound() {
        let (fake, r) = registry(Duration::from_secs(60));
        fake.rows
            .lock()
            .unwrap()
            .insert("a".into(), record("a", HOOK));
        assert_eq!(r.app("a").await.unwrap().id, "a");
        for i in 0..25_000 {
            assert!(r.app(&format!("random-{i}")).await.is_err());
            assert!(r.app_by_key(&format!("key-{i}")).await.is_err());
        }
        let (ids, keys) = {
            let maps = r.maps.lock().unwrap();
            (maps.by_id.entries.len(), maps.by_key.entries.len())
        };
        assert!(
            ids <= MAX_UNKNOWN + 1 && keys <= MAX_UNKNOWN + 1,
            "{ids} ids and {keys} keys cached after 25,000 random lookups of each"
        );
        let calls = fake.calls.load(Ordering::SeqCst);
        assert_eq!(r.app("a").await.unwrap().id, "a");
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls,
            "a found app stays cached"
        );

        // Once their time is up, the unknowns kept make room for new ones.
        let (fake, r) = registry(Duration::from_millis(50));
        for i in 0..MAX_UNKNOWN {
            assert!(r.app(&format!("old-{i}")).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(r.app("new").await.is_err());
        let calls = fake.calls.load(Ordering::SeqCst);
        assert!(r.app("new").await.is_err());
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls,
            "the new unknown is kept"
        );
        assert_eq!(r.maps.lock().unwrap().by_id.entries.len(), 1);
    }
}
