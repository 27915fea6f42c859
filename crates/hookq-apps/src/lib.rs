//! Sockudo's database-backed app managers for hookq: the apps (and each
//! app's `webhooks`) are read from Sockudo's applications table, so that a
//! Sockudo deployment gains hookq workers without moving its apps.
//!
//! [`open`] picks the registry `app_manager.driver` names: `memory` gives the
//! config file's apps ([`StaticApps`]); `pgsql`/`postgres`, `mysql` and
//! `dynamodb` (each behind the feature of that name) give a [`CachedApps`]
//! over that database. Every database registry keeps each app for its
//! `cache_ttl`, an unknown id for a few seconds, and serves its cached copy
//! — even expired — while the database is down.

mod cache;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(any(feature = "pgsql", feature = "mysql"))]
pub mod sql;

pub use cache::{CachedApps, Lookup, Record, Source};

use hookq_core::{AppManagerSettings, AppRegistry, Config, StaticApps};
use std::sync::Arc;

/// The app registry `config.app_manager` asks for; fails when its database
/// cannot be set up (a database that is merely down is not an error: the
/// first lookups wait for it).
pub async fn open(config: &Arc<Config>) -> anyhow::Result<Arc<dyn AppRegistry>> {
    match &config.app_manager {
        AppManagerSettings::Memory => Ok(Arc::new(StaticApps::new(&config.apps))),
        #[cfg(feature = "pgsql")]
        AppManagerSettings::Postgres(s) => {
            let source = sql::Postgres::connect(s)?;
            Ok(Arc::new(CachedApps::new(
                source,
                config.clone(),
                s.cache_ttl,
            )))
        }
        #[cfg(feature = "mysql")]
        AppManagerSettings::Mysql(s) => {
            let source = sql::Mysql::connect(s)?;
            Ok(Arc::new(CachedApps::new(
                source,
                config.clone(),
                s.cache_ttl,
            )))
        }
        #[cfg(feature = "dynamodb")]
        AppManagerSettings::DynamoDb(s) => {
            let source = dynamodb::DynamoDb::connect(s).await;
            Ok(Arc::new(CachedApps::new(
                source,
                config.clone(),
                s.cache_ttl,
            )))
        }
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "app manager {:?} is not built into this binary (enable the cargo feature {:?})",
            other.driver(),
            match other.driver() {
                "postgres" => "pgsql",
                d => d,
            }
        ),
    }
}
