//! The front door: at most `GATEWAY_MAX_IN_FLIGHT` public requests inside this process at
//! once; beyond that, 503 + `Retry-After` at once, before any Redis call, session check or
//! upstream call is spent on them.
//!
//! Under a sale spike on a CPU-bound machine, every request the gateway starts competes
//! for the same cores, so admitting more than the machine can finish only makes every
//! answer late (Little's law: latency = requests inside / throughput). Refusing the
//! excess at the door costs little more than parsing it, which keeps admitted requests
//! fast and the refusals themselves fast. The shares per priority are the guard's:
//! cart changes may fill the door, reads 90 %, new sessions and logins 70 %, so what
//! is shed first is what a shopper loses least by retrying.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use prometheus::{IntCounterVec, IntGauge, Opts};
use svc_kit::metrics::Metrics;
use svc_kit::Problem;

use crate::guard::Priority;
use crate::AppState;

pub struct Door {
    limit: usize,
    inside: AtomicUsize,
    gauge: IntGauge,
    shed: IntCounterVec,
}

impl Door {
    pub fn new(limit: usize, m: &Metrics) -> Self {
        let gauge = m.register(
            &IntGauge::new(
                "gateway_requests_inside",
                "Public requests inside this gateway process (admitted by the front door, not yet answered)",
            )
            .expect("static metric definition is valid"),
        );
        let shed = m.register(
            &IntCounterVec::new(
                Opts::new(
                    "gateway_front_door_shed_total",
                    "Requests answered 503 at the front door because GATEWAY_MAX_IN_FLIGHT was reached, by priority",
                ),
                &["priority"],
            )
            .expect("static metric definition is valid"),
        );
        for p in [Priority::Critical, Priority::Normal, Priority::Low] {
            shed.with_label_values(&[p.as_str()]);
        }
        Self {
            limit,
            inside: AtomicUsize::new(0),
            gauge,
            shed,
        }
    }

    /// A place inside, or None when this priority's share is taken.
    fn enter(&self, p: Priority) -> Option<Inside<'_>> {
        let allowed = (self.limit * p.share() / 100).max(1);
        let n = self.inside.fetch_add(1, Ordering::AcqRel) + 1;
        if n > allowed {
            self.inside.fetch_sub(1, Ordering::AcqRel);
            self.shed.with_label_values(&[p.as_str()]).inc();
            return None;
        }
        self.gauge.inc();
        Some(Inside(self))
    }
}

/// Leaves the door on drop, whether the request finished, failed or was cancelled.
struct Inside<'a>(&'a Door);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

pub async fn front_door(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    if !req.path().starts_with("/api/") {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let p = Priority::of_request(req.method(), req.path());
    let Some(_inside) = st.door.enter(p) else {
        let res = Problem::unavailable(1)
            .detail("the gateway is at capacity; retry after Retry-After seconds")
            .error_response();
        return Ok(req.into_response(res));
    };
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    use super::*;

    #[test]
    fn priorities_by_route() {
        let p = |m: Method, path: &str| Priority::of_request(&m, path);
        assert_eq!(p(Method::POST, "/api/v1/sessions"), Priority::Low);
        assert_eq!(p(Method::POST, "/api/v1/auth/login"), Priority::Low);
        assert_eq!(p(Method::POST, "/api/v1/auth/register"), Priority::Low);
        assert_eq!(p(Method::POST, "/api/v1/auth/refresh"), Priority::Normal);
        assert_eq!(p(Method::GET, "/api/v1/cart"), Priority::Normal);
        assert_eq!(p(Method::GET, "/api/v1/session"), Priority::Normal);
        assert_eq!(p(Method::POST, "/api/v1/cart/items"), Priority::Critical);
        assert_eq!(p(Method::DELETE, "/api/v1/cart"), Priority::Critical);
        assert_eq!(p(Method::POST, "/api/v1/cart/ops"), Priority::Critical);
    }

    #[test]
    fn the_door_admits_each_priority_its_share_and_lets_go_on_drop() {
        let door = Door::new(10, &Metrics::new("test"));
        let mut held: Vec<_> = (0..7)
            .map(|_| door.enter(Priority::Low).expect("70 %"))
            .collect();
        assert!(door.enter(Priority::Low).is_none());
        held.extend((0..2).map(|_| door.enter(Priority::Normal).expect("90 %")));
        assert!(door.enter(Priority::Normal).is_none());
        held.push(door.enter(Priority::Critical).expect("100 %"));
        assert!(door.enter(Priority::Critical).is_none());
        assert_eq!(door.shed.with_label_values(&["low"]).get(), 1);
        held.clear();
        assert_eq!(door.inside.load(Ordering::Acquire), 0);
        assert_eq!(door.gauge.get(), 0);
        assert!(door.enter(Priority::Low).is_some());
    }
}
