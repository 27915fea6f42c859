//! The AWS SDK configuration that the SQS driver, the DynamoDB app registry
//! and the Lambda deliverer share, so that the three clients find their
//! region, credentials and endpoint the same way.
//!
//! - **Region**: the one given; else the standard chain's (environment,
//!   profile, instance metadata); else, with a custom endpoint, `us-east-1`.
//! - **Endpoint**: AWS's, or `endpoint_url` when set (an emulator, LocalStack,
//!   a VPC endpoint).
//! - **Credentials**: the standard chain (environment, profile, web identity,
//!   ECS, EC2 instance metadata). With a custom endpoint, the chain is asked
//!   once, when the configuration is built: when it has none (or fails), the
//!   requests are signed with the static credentials `test`/`test`, so an
//!   emulator needs no AWS setup.
//! - **Timeouts**: the caller's, as each service needs its own (a long poll
//!   lasts 20 s; a table lookup should not).

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::meta::region::RegionProviderChain;
pub use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

/// Where a client sends its requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The region; see the crate docs for what applies when it is absent.
    pub region: Option<&'a str>,
    /// A custom endpoint URL, e.g. an emulator's.
    pub endpoint_url: Option<&'a str>,
}

/// The SDK configuration for `service`'s client (`service` names it in logs).
pub async fn sdk_config(service: &str, target: Target<'_>, timeouts: TimeoutConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    let given = target.region.map(|r| Region::new(r.to_string()));
    let Some(endpoint) = target.endpoint_url else {
        if let Some(region) = given {
            loader = loader.region(region);
        }
        return loader.load().await;
    };
    let region = RegionProviderChain::first_try(given)
        .or_default_provider()
        .region()
        .await
        .unwrap_or(Region::from_static("us-east-1"));
    let standard = DefaultCredentialsChain::builder()
        .region(region.clone())
        .build()
        .await;
    let credentials = match standard.provide_credentials().await {
        Ok(_) => SharedCredentialsProvider::new(standard),
        Err(e) => {
            tracing::warn!(
                service, endpoint_url = %endpoint, error = %error_chain(&e),
                "no AWS credentials found; signing requests to the custom endpoint with test credentials"
            );
            SharedCredentialsProvider::new(Credentials::new(
                "test",
                "test",
                None,
                None,
                "hookq-emulator",
            ))
        }
    };
    loader
        .region(region)
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .load()
        .await
}

/// An error and its sources, `: `-separated, without the repeats the SDK's
/// layers add (each often ends with its source's text).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
