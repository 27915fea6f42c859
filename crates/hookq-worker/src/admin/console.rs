//! The web console's static files under `/console` (issue 17 item 2): a
//! placeholder until the console lands; it adds no route yet.

use axum::Router;

/// The console's routes (none yet), served without a token: every figure
/// the console shows comes from the admin API, which needs one.
pub fn routes() -> Router {
    Router::new()
}
