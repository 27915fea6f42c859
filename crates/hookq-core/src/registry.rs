//! Where apps come from: the [`AppRegistry`] the worker and the producer ask
//! for an app by id (or key), and [`StaticApps`], the registry of the
//! `memory` app manager — the config file's `app_manager.array.apps`, which a
//! worker can swap for a reloaded set while it runs.
//!
//! Database-backed registries (Sockudo's other app managers) implement the
//! same trait. A lookup tells apart an unknown app (the job is dead-lettered),
//! an app whose stored configuration is invalid (dead-lettered with the
//! problem) and a registry that cannot answer now (the job waits in the
//! queue and comes back).

use crate::config::App;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Why an app could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No app has this id (or key).
    #[error("unknown app {0:?}")]
    Unknown(String),
    /// The app exists but its stored configuration is not valid.
    #[error("app {id:?} has an invalid configuration: {reason}")]
    Invalid {
        /// The app's id.
        id: String,
        /// What is wrong, with JSON paths.
        reason: String,
    },
    /// The registry cannot answer now (a database down and nothing cached).
    #[error("app registry unavailable: {0}")]
    Unavailable(String),
}

/// Looks apps up for the worker and the producer.
#[async_trait]
pub trait AppRegistry: Send + Sync + 'static {
    /// The app with this id.
    async fn app(&self, id: &str) -> Result<Arc<App>, LookupError>;

    /// The app with this key.
    async fn app_by_key(&self, key: &str) -> Result<Arc<App>, LookupError>;

    /// Whether the registry can resolve apps now (for `/ready`).
    fn is_ready(&self) -> bool {
        true
    }
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

/// A fixed set of apps that can be replaced as a whole (the `memory` app manager).
#[derive(Default)]
pub struct StaticApps {
    index: RwLock<Arc<Index>>,
}

impl StaticApps {
    /// A registry of these apps.
    pub fn new(apps: &[Arc<App>]) -> Self {
        let registry = Self::default();
        registry.replace(apps);
        registry
    }

    /// Swaps in a new set of apps; lookups already answered keep their app.
    pub fn replace(&self, apps: &[Arc<App>]) {
        let index = Index {
            by_id: apps.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            by_key: apps.iter().map(|a| (a.key.clone(), a.clone())).collect(),
        };
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }

    fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many apps it holds.
    pub fn len(&self) -> usize {
        self.current().by_id.len()
    }

    /// Whether it holds no app.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl AppRegistry for StaticApps {
    async fn app(&self, id: &str) -> Result<Arc<App>, LookupError> {
        self.current()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| LookupError::Unknown(id.to_string()))
    }

    async fn app_by_key(&self, key: &str) -> Result<Arc<App>, LookupError> {
        self.current()
            .by_key
            .get(key)
            .cloned()
            .ok_or_else(|| LookupError::Unknown(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> Arc<App> {
        Arc::new(App {
            id: id.into(),
            key: format!("{id}-key"),
            secret: "s".into(),
            enabled: true,
            endpoints: Vec::new(),
        })
    }

    #[test]
    fn looks_up_by_id_and_key_and_swaps_atomically() {
        let r = StaticApps::new(&[app("a"), app("b")]);
        let block = |f: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>| {
            // A future that never waits: poll it once.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut f = f;
            match f.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(v) => v,
                std::task::Poll::Pending => panic!("lookup waited"),
            }
        };
        assert_eq!(block(r.app("a")).unwrap().id, "a");
        assert_eq!(block(r.app_by_key("b-key")).unwrap().id, "b");
        assert_eq!(
            block(r.app("c")).unwrap_err(),
            LookupError::Unknown("c".into())
        );
        r.replace(&[app("c")]);
        assert!(block(r.app("a")).is_err());
        assert_eq!(block(r.app("c")).unwrap().id, "c");
        assert_eq!(r.len(), 1);
    }
}
