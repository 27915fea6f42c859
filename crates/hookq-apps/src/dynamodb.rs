//! Sockudo's applications table in DynamoDB (`dynamodb`).
//!
//! Items are keyed by the string attribute `id`, with `key`, `secret`,
//! `enabled` (a boolean, or a number 0/1) and `webhooks` (or the attribute
//! `webhooks_attribute` names) as a JSON string attribute. A lookup by id is a `GetItem`; a lookup by key scans with a
//! filter on `key` (as Sockudo does; the cache keeps it rare).

use crate::cache::{Lookup, Record, Source, SourceError};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use hookq_aws::TimeoutConfig;
use hookq_core::DynamoDbAppsSettings;
use std::collections::HashMap;
use std::time::Duration;

/// The applications table in DynamoDB.
pub struct DynamoDb {
    client: Client,
    table: String,
    webhooks: String,
}

impl DynamoDb {
    /// A client for `settings`: the standard credential chain, or static
    /// test credentials when a custom endpoint is set and the chain finds none.
    pub async fn connect(settings: &DynamoDbAppsSettings) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(5))
            .build();
        let target = hookq_aws::Target {
            region: Some(&settings.region),
            endpoint_url: settings.endpoint_url.as_deref(),
        };
        let config = hookq_aws::sdk_config("dynamodb", target, timeouts).await;
        Self {
            client: Client::new(&config),
            table: settings.table_name.clone(),
            webhooks: settings.webhooks_attribute.clone(),
        }
    }
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name)? {
        AttributeValue::S(s) => Some(s.clone()),
        AttributeValue::N(n) => Some(n.clone()),
        _ => None,
    }
}

fn to_record(item: &HashMap<String, AttributeValue>, webhooks_attribute: &str) -> Record {
    let enabled = match item.get("enabled") {
        Some(AttributeValue::Bool(b)) => *b,
        Some(AttributeValue::N(n)) => n.trim() != "0",
        Some(AttributeValue::S(s)) => !matches!(s.as_str(), "false" | "0"),
        _ => true,
    };
    let webhooks = match item.get(webhooks_attribute) {
        None | Some(AttributeValue::Null(_)) => None,
        Some(AttributeValue::S(s)) => Some(s.clone()),
        // Not a JSON string: passed on as text that does not parse, so the
        // app is reported invalid with the reason.
        Some(other) => Some(format!(
            "<webhooks is not a JSON string attribute: {other:?}>"
        )),
    };
    Record {
        id: string(item, "id").unwrap_or_default(),
        key: string(item, "key").unwrap_or_default(),
        secret: string(item, "secret").unwrap_or_default(),
        enabled,
        webhooks,
    }
}

#[async_trait]
impl Source for DynamoDb {
    async fn fetch(&self, by: Lookup<'_>) -> Result<Option<Record>, SourceError> {
        match by {
            Lookup::Id(id) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("id", AttributeValue::S(id.to_string()))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| SourceError::DynamoDb(DisplayErrorContext(&e).to_string()))?;
                Ok(out.item.as_ref().map(|i| to_record(i, &self.webhooks)))
            }
            Lookup::Key(key) => {
                let mut start = None;
                loop {
                    let out = self
                        .client
                        .scan()
                        .table_name(&self.table)
                        .filter_expression("#k = :k")
                        .expression_attribute_names("#k", "key")
                        .expression_attribute_values(":k", AttributeValue::S(key.to_string()))
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| SourceError::DynamoDb(DisplayErrorContext(&e).to_string()))?;
                    if let Some(item) = out.items().first() {
                        return Ok(Some(to_record(item, &self.webhooks)));
                    }
                    match out.last_evaluated_key {
                        Some(next) if !next.is_empty() => start = Some(next),
                        _ => return Ok(None),
                    }
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        "dynamodb"
    }
}
