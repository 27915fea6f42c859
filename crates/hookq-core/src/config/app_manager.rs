//! The `app_manager` section and the `database.postgres`, `database.mysql`
//! and `database.dynamodb` sections: where apps come from, the memory
//! driver's `app_manager.array.apps`, and the app cache's TTL.

use super::apps::{App, check_http_url, read_app};
use super::reader::Obj;
use super::{Diagnostics, WebhookSettings, WorkerSettings};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where apps come from (`app_manager.driver` and its `database.*` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppManagerSettings {
    /// `memory`: the config file's `app_manager.array.apps`, reloaded live.
    Memory,
    /// `pgsql` / `postgres`: Sockudo's applications table in PostgreSQL (`database.postgres`).
    Postgres(SqlAppsSettings),
    /// `mysql`: Sockudo's applications table in MySQL or MariaDB (`database.mysql`).
    Mysql(SqlAppsSettings),
    /// `dynamodb`: Sockudo's applications table in DynamoDB (`database.dynamodb`).
    DynamoDb(DynamoDbAppsSettings),
}

impl AppManagerSettings {
    /// The driver's config name (`postgres` for both `pgsql` and `postgres`).
    pub fn driver(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres(_) => "postgres",
            Self::Mysql(_) => "mysql",
            Self::DynamoDb(_) => "dynamodb",
        }
    }
}

/// `database.postgres` or `database.mysql`, as the app manager uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct SqlAppsSettings {
    /// `host`.
    pub host: String,
    /// `port` (5432 for PostgreSQL, 3306 for MySQL).
    pub port: u16,
    /// `username` (or `user`).
    pub username: String,
    /// `password`; none when empty or absent. Never logged.
    pub password: Option<String>,
    /// `database`.
    pub database: String,
    /// `table_name`, default `applications`.
    pub table_name: String,
    /// `webhooks_column`, default `webhooks`: the JSON column hookq reads an
    /// app's endpoints from. When Sockudo shares the table, its own
    /// `webhooks` column points at hookq's ingest, so hookq's endpoints need
    /// a column of their own (e.g. `hookq_webhooks`; docs/senders.md).
    pub webhooks_column: String,
    /// `connection_pool_size`: most open connections.
    pub connection_pool_size: u32,
    /// How long a looked-up app is kept before it is read again
    /// (`cache_ttl`, else `app_manager.cache.ttl`; zero when `app_manager.cache.enabled` is false).
    pub cache_ttl: Duration,
}

impl fmt::Debug for SqlAppsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAppsSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("table_name", &self.table_name)
            .field("connection_pool_size", &self.connection_pool_size)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// `database.dynamodb`, as the app manager uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbAppsSettings {
    /// `table_name`, default `sockudo-applications`.
    pub table_name: String,
    /// `region`, default `us-east-1`.
    pub region: String,
    /// `endpoint_url`: a custom endpoint (DynamoDB Local, an emulator).
    pub endpoint_url: Option<String>,
    /// `webhooks_attribute`, default `webhooks`: the attribute hookq reads
    /// an app's endpoints from (as [`SqlAppsSettings::webhooks_column`]).
    pub webhooks_attribute: String,
    /// How long a looked-up app is kept (as for [`SqlAppsSettings::cache_ttl`]).
    pub cache_ttl: Duration,
}

/// The app manager drivers hookq knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AppDriver {
    Memory,
    Postgres,
    Mysql,
    DynamoDb,
}

/// Reads `app_manager`: the memory driver's apps, the driver, and the cache
/// TTL `app_manager.cache` sets (`None` when it leaves it to `database.*.cache_ttl`).
pub(super) fn read_app_manager(
    o: &mut Obj,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> (Vec<Arc<App>>, AppDriver, Option<Duration>) {
    let driver = match o.str("driver", d).as_deref() {
        None | Some("memory") => AppDriver::Memory,
        Some("pgsql" | "postgres") => AppDriver::Postgres,
        Some("mysql") => AppDriver::Mysql,
        Some("dynamodb") => AppDriver::DynamoDb,
        Some(other) => {
            d.error(
                &o.at("driver"),
                format!(
                    "unknown app manager {other:?}; use \"memory\", \"pgsql\" (or \"postgres\"), \"mysql\" or \"dynamodb\""
                ),
            );
            AppDriver::Memory
        }
    };
    let mut c = o.obj("cache", d);
    let cache_enabled = c.bool("enabled", true, d);
    let cache_ttl = c.opt_u64("ttl", 0, d).map(Duration::from_secs);
    c.finish(d);
    let cache_ttl = if cache_enabled {
        cache_ttl
    } else {
        Some(Duration::ZERO)
    };
    let mut array = o.obj("array", d);
    let mut apps = Vec::new();
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for (path, value) in array.array("apps", d) {
        let mut a = Obj::new(path, Some(value), d);
        let Some(app) = read_app(&mut a, webhooks, worker, d) else {
            continue;
        };
        if !ids.insert(app.id.clone()) {
            d.error(&a.at("id"), format!("duplicate app id {:?}", app.id));
        }
        if !keys.insert(app.key.clone()) {
            d.error(&a.at("key"), format!("duplicate app key {:?}", app.key));
        }
        a.finish(d);
        apps.push(Arc::new(app));
    }
    array.finish(d);
    o.finish(d);
    (apps, driver, cache_ttl)
}

/// Sockudo's database keys that concern its own cache, not hookq.
const SOCKUDO_DB_KEYS: &[&str] = &[
    "cache_cleanup_interval",
    "cache_max_capacity",
    "pool_min",
    "pool_max",
];

/// Sockudo's default cache TTL of a database app manager, in seconds.
const DEFAULT_APP_CACHE_TTL: u64 = 300;

/// Reads `database.postgres`, `database.mysql` and `database.dynamodb`
/// (each checked when present) and builds the chosen driver's settings.
pub(super) fn read_app_databases(
    database: &mut Obj,
    driver: AppDriver,
    manager_ttl: Option<Duration>,
    d: &mut Diagnostics,
) -> AppManagerSettings {
    let mut sql = |name: &'static str, port: u16, username: &str, d: &mut Diagnostics| {
        let mut o = database.obj(name, d);
        let user = o.nonempty_str("username", d);
        let user_alias = o.nonempty_str("user", d);
        if let (Some(a), Some(b)) = (&user, &user_alias)
            && a != b
        {
            d.error(
                &o.at("user"),
                format!("{b:?} differs from username {a:?}; give one"),
            );
        }
        let port_path = o.at("port");
        let port = match o.opt_u64("port", 1, d) {
            None => port,
            Some(p) => u16::try_from(p).unwrap_or_else(|_| {
                d.error(&port_path, format!("{p} is not a port (1-65535)"));
                port
            }),
        };
        let settings = SqlAppsSettings {
            host: o
                .nonempty_str("host", d)
                .unwrap_or_else(|| "localhost".into()),
            port,
            username: user.or(user_alias).unwrap_or_else(|| username.into()),
            password: o.str("password", d).filter(|p| !p.is_empty()),
            database: o
                .nonempty_str("database", d)
                .unwrap_or_else(|| "sockudo".into()),
            table_name: o
                .nonempty_str("table_name", d)
                .unwrap_or_else(|| "applications".into()),
            webhooks_column: o
                .nonempty_str("webhooks_column", d)
                .unwrap_or_else(|| "webhooks".into()),
            connection_pool_size: o.u64("connection_pool_size", 10, 1, d).min(u32::MAX as u64)
                as u32,
            cache_ttl: o
                .opt_u64("cache_ttl", 0, d)
                .map(Duration::from_secs)
                .unwrap_or(manager_ttl.unwrap_or(Duration::from_secs(DEFAULT_APP_CACHE_TTL))),
        };
        check_table_name(&settings.table_name, &o.at("table_name"), d);
        let column = &settings.webhooks_column;
        let plain = !column.starts_with(|c: char| c.is_ascii_digit())
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            d.error(
                &o.at("webhooks_column"),
                format!("{column:?} is not a plain column name (letters, digits, _)"),
            );
        }
        o.ignore(SOCKUDO_DB_KEYS);
        o.finish(d);
        settings
    };
    let postgres = sql("postgres", 5432, "postgres", d);
    let mysql = sql("mysql", 3306, "root", d);
    let mut o = database.obj("dynamodb", d);
    let dynamodb = DynamoDbAppsSettings {
        table_name: o
            .nonempty_str("table_name", d)
            .unwrap_or_else(|| "sockudo-applications".into()),
        region: o
            .nonempty_str("region", d)
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint_url: o.nonempty_str("endpoint_url", d),
        webhooks_attribute: o
            .nonempty_str("webhooks_attribute", d)
            .unwrap_or_else(|| "webhooks".into()),
        cache_ttl: o
            .opt_u64("cache_ttl", 0, d)
            .map(Duration::from_secs)
            .unwrap_or(manager_ttl.unwrap_or(Duration::from_secs(DEFAULT_APP_CACHE_TTL))),
    };
    if let Some(u) = &dynamodb.endpoint_url {
        check_http_url(u, &o.at("endpoint_url"), d);
    }
    o.ignore(&[
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_profile_name",
    ]);
    o.ignore(SOCKUDO_DB_KEYS);
    o.finish(d);
    match driver {
        AppDriver::Memory => AppManagerSettings::Memory,
        AppDriver::Postgres => AppManagerSettings::Postgres(postgres),
        AppDriver::Mysql => AppManagerSettings::Mysql(mysql),
        AppDriver::DynamoDb => AppManagerSettings::DynamoDb(dynamodb),
    }
}

/// A table name goes into SQL text: letters, digits, `_`, `$` and an optional `schema.` prefix only.
pub(super) fn check_table_name(name: &str, path: &str, d: &mut Diagnostics) {
    let ok = name.split('.').count() <= 2
        && name.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        });
    if !ok {
        d.error(
            path,
            format!("{name:?} is not a plain table name (letters, digits, _, and one optional schema. prefix)"),
        );
    }
}
