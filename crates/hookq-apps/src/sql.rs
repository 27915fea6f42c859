//! Sockudo's applications table in PostgreSQL (`pgsql`/`postgres`) and MySQL
//! or MariaDB (`mysql`), read with sqlx.
//!
//! Each lookup is one query by `id` or by `key`; the endpoints come from the
//! column `webhooks_column` names (`webhooks`, or a column of hookq's own
//! when Sockudo shares the table). Columns are cast to text on
//! the server so that either column type Sockudo's schemas use (`JSONB` or
//! `JSON` for `webhooks`, `BOOLEAN` or `TINYINT(1)` for `enabled`) reads the
//! same way; the table name is checked by the config reader to be a plain
//! name, as it goes into the SQL text.

use crate::cache::{Lookup, Record, Source, SourceError};
use async_trait::async_trait;
use hookq_core::SqlAppsSettings;
use std::time::Duration;

/// How long a lookup waits for a pooled connection before it reports the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

fn record(
    id: String,
    key: String,
    secret: String,
    enabled: bool,
    webhooks: Option<String>,
) -> Record {
    Record {
        id,
        key,
        secret,
        enabled,
        webhooks,
    }
}

/// The applications table in PostgreSQL.
#[cfg(feature = "pgsql")]
pub struct Postgres {
    pool: sqlx::PgPool,
    by_id: String,
    by_key: String,
}

#[cfg(feature = "pgsql")]
impl Postgres {
    /// A lazily connecting pool for `settings` (no connection is made until the first lookup).
    pub fn connect(settings: &SqlAppsSettings) -> anyhow::Result<Self> {
        use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
        let mut options = PgConnectOptions::new()
            .host(&settings.host)
            .port(settings.port)
            .username(&settings.username)
            .database(&settings.database)
            .application_name("hookq");
        if let Some(p) = &settings.password {
            options = options.password(p);
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.connection_pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let select = format!(
            "SELECT id::text, \"key\"::text, secret::text, COALESCE(enabled, TRUE), {}::text FROM {}",
            settings.webhooks_column, settings.table_name
        );
        Ok(Self {
            pool,
            by_id: format!("{select} WHERE id = $1"),
            by_key: format!("{select} WHERE \"key\" = $1"),
        })
    }
}

#[cfg(feature = "pgsql")]
#[async_trait]
impl Source for Postgres {
    async fn fetch(&self, by: Lookup<'_>) -> Result<Option<Record>, SourceError> {
        let (sql, value) = match by {
            Lookup::Id(v) => (&self.by_id, v),
            Lookup::Key(v) => (&self.by_key, v),
        };
        let row: Option<(String, String, String, bool, Option<String>)> = sqlx::query_as(sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|(id, key, secret, enabled, webhooks)| record(id, key, secret, enabled, webhooks)))
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// The applications table in MySQL or MariaDB.
#[cfg(feature = "mysql")]
pub struct Mysql {
    pool: sqlx::MySqlPool,
    by_id: String,
    by_key: String,
}

#[cfg(feature = "mysql")]
impl Mysql {
    /// A lazily connecting pool for `settings` (no connection is made until the first lookup).
    pub fn connect(settings: &SqlAppsSettings) -> anyhow::Result<Self> {
        use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
        let mut options = MySqlConnectOptions::new()
            .host(&settings.host)
            .port(settings.port)
            .username(&settings.username)
            .database(&settings.database);
        if let Some(p) = &settings.password {
            options = options.password(p);
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.connection_pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let select = format!(
            "SELECT CAST(id AS CHAR), CAST(`key` AS CHAR), CAST(secret AS CHAR), \
             CAST(COALESCE(enabled, 1) AS SIGNED), CAST({} AS CHAR) FROM {}",
            settings.webhooks_column, settings.table_name
        );
        Ok(Self {
            pool,
            by_id: format!("{select} WHERE id = ?"),
            by_key: format!("{select} WHERE `key` = ?"),
        })
    }
}

#[cfg(feature = "mysql")]
#[async_trait]
impl Source for Mysql {
    async fn fetch(&self, by: Lookup<'_>) -> Result<Option<Record>, SourceError> {
        let (sql, value) = match by {
            Lookup::Id(v) => (&self.by_id, v),
            Lookup::Key(v) => (&self.by_key, v),
        };
        let row: Option<(String, String, String, i64, Option<String>)> = sqlx::query_as(sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, key, secret, enabled, webhooks)| {
            record(id, key, secret, enabled != 0, webhooks)
        }))
    }

    fn name(&self) -> &'static str {
        "mysql"
    }
}
