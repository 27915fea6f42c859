//! Sending a batch to its endpoint's target: HTTP, or Lambda when built with
//! the `lambda` feature. Each target's deliverer maps its own errors into an
//! [`Outcome`].

use crate::batch::Batch;
use crate::http::{HttpDeliverer, build_request};
use crate::outcome::{Failure, Outcome};
use hookq_core::endpoint::EndpointTarget;

/// Every kind of deliverer, chosen per endpoint.
#[derive(Clone)]
pub struct Deliverer {
    http: HttpDeliverer,
    #[cfg(feature = "lambda")]
    lambda: crate::lambda::LambdaDeliverer,
}

impl Deliverer {
    /// Deliverers configured from the webhook settings.
    pub fn new(settings: &hookq_core::config::WebhookSettings) -> anyhow::Result<Self> {
        Ok(Self {
            http: HttpDeliverer::new(settings.connect_timeout)?,
            #[cfg(feature = "lambda")]
            lambda: crate::lambda::LambdaDeliverer::new(settings.connect_timeout),
        })
    }

    /// One attempt of `batch`, stamped `time_ms`.
    pub async fn deliver(&self, batch: &Batch, time_ms: u64) -> Outcome {
        match &batch.endpoint().target {
            EndpointTarget::Http(url) => match build_request(batch, url, time_ms) {
                Ok(request) => self.http.send(request).await,
                Err(reason) => Outcome::Reject {
                    failure: Failure::new(format!("request could not be built: {reason}")),
                },
            },
            #[cfg(feature = "lambda")]
            // Boxed: the AWS SDK's future is large (several KiB), and inline
            // it would make every HTTP delivery's future as large.
            EndpointTarget::Lambda(target) => {
                Box::pin(self.lambda.deliver(target, batch, time_ms)).await
            }
            #[cfg(not(feature = "lambda"))]
            EndpointTarget::Lambda(_) => Outcome::Reject {
                failure: Failure::new("this hookq was built without the `lambda` feature"),
            },
        }
    }
}
