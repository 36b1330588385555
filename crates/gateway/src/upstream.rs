//! Calls to the backends, and the one place where their failures become status codes:
//! connect failure 502, timeout 504, anything else unusable 502. A backend's own answer
//! (including its 503 + Retry-After) is passed through untouched.

use actix_web::http::StatusCode;
use svc_kit::Problem;

/// Maps a failed call to a backend (no usable HTTP answer) to the client's problem.
pub fn failure(peer: &str, e: &reqwest::Error) -> Problem {
    if e.is_timeout() {
        tracing::warn!(peer, error = %e, "upstream timed out");
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway-timeout",
            "Gateway timeout",
        )
        .detail("a backend service did not answer in time; retry later")
        .retry_after(1)
    } else if e.is_connect() {
        tracing::warn!(peer, error = %e, "upstream unreachable");
        Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
            .detail("a backend service is unreachable; retry later")
            .retry_after(1)
    } else {
        tracing::warn!(peer, error = %e, "upstream call failed");
        Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
            .detail("a backend service failed to answer properly")
    }
}

/// A backend answered with an error we must relay as our own problem: its body is
/// already problem+json (every service renders errors that way), so pass it through
/// with its status and `Retry-After`.
pub async fn relay_error(peer: &str, res: reqwest::Response) -> actix_web::HttpResponse {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = res.headers().get(reqwest::header::RETRY_AFTER).cloned();
    match res.bytes().await {
        Ok(body) => {
            let mut out = actix_web::HttpResponse::build(status);
            out.content_type(svc_kit::problem::CONTENT_TYPE);
            if let Some(v) = retry_after.and_then(|v| v.to_str().ok().map(str::to_owned)) {
                out.insert_header((actix_web::http::header::RETRY_AFTER, v));
            }
            out.body(body)
        }
        Err(e) => failure(peer, &e).to_response(),
    }
}
