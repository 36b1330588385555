//! The OpenAPI document against the gateway as it is really routed: no datastore and no
//! backend needed (the backends' addresses refuse connections).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::test::{call_service, init_service, read_body, read_body_json, TestRequest};
use actix_web::{web, App, HttpResponse};
use gateway::config::Config;
use gateway::AppState;
use serde_json::Value;
use svc_kit::config::Env;
use svc_kit::internal::Peer;
use svc_kit::metrics::Metrics;
use svc_kit::ops::Readiness;

/// Every route the gateway serves, as (method, OpenAPI path): its own (`routes.rs`,
/// `openapi.rs`) and svc-kit's ops routes. actix-web cannot list what it registered, so
/// `the_registered_routes_are_exactly_the_documented_ones` probes every documented path
/// with every method against the real routing.
const ROUTES: [(&str, &str); 20] = [
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/session"),
    ("DELETE", "/api/v1/session"),
    ("GET", "/api/v1/cart"),
    ("DELETE", "/api/v1/cart"),
    ("POST", "/api/v1/cart/items"),
    ("PUT", "/api/v1/cart/items/{product_id}"),
    ("DELETE", "/api/v1/cart/items/{product_id}"),
    ("POST", "/api/v1/cart/ops"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/{file}"),
];

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// Marks a request no route took (the production default service answers 404 too).
const UNROUTED: &str = "x-test-unrouted";

fn document() -> Value {
    serde_json::from_str(gateway::openapi::document()).unwrap()
}

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method.to_ascii_lowercase()).is_some() {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    documented(doc)
        .into_iter()
        .map(|(m, p)| {
            let op = &doc["paths"][&p][m.to_ascii_lowercase()];
            (m, p, op)
        })
        .collect()
}

/// Follows a local `$ref` (`#/components/...`), if `v` is one.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').unwrap())
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

fn state() -> web::Data<AppState> {
    let cfg = Config::read(Env::from_fn(|name| match name {
        "INTERNAL_TOKEN" => Some("t".repeat(32)),
        // Nothing listens there: a call to a backend fails at once (502).
        "SESSION_URL" | "CART_URL" | "AUTH_URL" => Some("http://127.0.0.1:1".to_owned()),
        _ => None,
    }))
    .unwrap();
    let peer = |name, url: &str| {
        Peer::new(
            name,
            url.to_owned(),
            cfg.common.internal_token.clone(),
            cfg.upstream,
        )
    };
    let sessions = peer("session-svc", &cfg.session_url);
    let carts = peer("cart-svc", &cfg.cart_url);
    let auth = peer("auth-svc", &cfg.auth_url);
    let jwt = std::sync::Arc::new(gateway::jwt::Verifier::new(auth.clone(), cfg.jwt.clone()));
    let guards = gateway::Guards::new(cfg.guard, &Metrics::new("gateway"));
    let door = gateway::door::Door::new(cfg.max_in_flight, &Metrics::new("gateway"));
    web::Data::new(AppState {
        guards,
        limiter: None,
        door,
        cfg,
        sessions,
        carts,
        auth,
        jwt,
    })
}

/// The gateway's routes as `svc_kit::server::serve` composes them.
fn gateway() -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::from(Metrics::new("gateway")))
        .app_data(web::Data::from(Readiness::new(Vec::new())))
        .app_data(state())
        .configure(svc_kit::ops::routes)
        .configure(gateway::routes::routes)
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .insert_header((UNROUTED, "1"))
                .finish()
        }))
}

/// A concrete URL for a documented path.
fn url(path: &str) -> String {
    path.replace("{product_id}", "sku-1")
        .replace("{file}", "swagger-ui.css")
}

#[test]
fn the_document_is_openapi_3_1_json() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi is {version}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["description"]
        .as_str()
        .unwrap()
        .contains("`idempotency-key-reused`"));
}

#[test]
fn the_document_lists_exactly_the_registered_routes() {
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented(&document()), expected);
}

#[actix_web::test]
async fn the_registered_routes_are_exactly_the_documented_ones() {
    let app = init_service(gateway()).await;
    let doc = document();
    let documented = documented(&doc);
    for (path, _) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let req = TestRequest::default()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&url(path))
                .to_request();
            let res = call_service(&app, req).await;
            let routed = res.status() != 405 && !res.headers().contains_key(UNROUTED);
            let listed = documented.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                routed,
                listed,
                "{method} {path}: routed={routed} (status {}), documented={listed}",
                res.status()
            );
        }
    }
}

#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    let pointer = r
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("non-local $ref {r}"));
                    assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    let doc = document();
    walk(&doc, &doc);
}

#[test]
fn every_operation_documents_a_4xx_problem() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let problem_4xx = op["responses"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(status, _)| status.starts_with('4'))
            .map(|(_, r)| resolve(&doc, r))
            .any(|r| {
                r["content"]["application/problem+json"]["schema"]["$ref"]
                    == "#/components/schemas/Problem"
            });
        // The ops routes are the exception: they answer every request they get.
        let ops = [
            "/livez",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/.well-known/jwks.json",
        ];
        assert!(
            problem_4xx || ops.contains(&path.as_str()),
            "{method} {path} documents no 4xx problem"
        );
    }
}

#[test]
fn api_operations_document_their_errors_headers_and_credentials() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        for (status, r) in op["responses"].as_object().unwrap() {
            let r = resolve(&doc, r);
            assert!(
                r["headers"]["X-Request-Id"].is_object(),
                "{method} {path} {status}: no X-Request-Id"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    r["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status}: not a problem"
                );
            }
            if ["503", "504"].contains(&status.as_str()) {
                assert!(
                    r["headers"]["Retry-After"].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
        if !path.starts_with("/api/v1/cart") && path != "/api/v1/session" {
            continue;
        }
        let schemes: Vec<&str> = op["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|req| req.as_object().unwrap().keys())
            .map(String::as_str)
            .collect();
        assert_eq!(
            schemes,
            ["session_token", "session_cookie", "bearer"],
            "{method} {path}"
        );
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
        let mutation = method != "GET";
        if mutation {
            assert!(op["responses"]["403"].is_object(), "{method} {path}");
        }
        if mutation && path.starts_with("/api/v1/cart") {
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert!(params.contains(&"If-Match"), "{method} {path}");
            assert!(params.contains(&"Idempotency-Key"), "{method} {path}");
            for status in ["200", "409", "412", "422"] {
                let r = resolve(&doc, &op["responses"][status]);
                assert!(
                    r["headers"]["Idempotent-Replayed"].is_object(),
                    "{method} {path} {status}"
                );
            }
            let precondition_failed = resolve(&doc, &op["responses"]["412"]);
            assert!(precondition_failed["headers"]["ETag"].is_object());
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["session_token"]["type"], "apiKey");
    assert_eq!(schemes["session_token"]["in"], "header");
    assert_eq!(schemes["session_token"]["name"], "X-Session-Token");
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "cart_session");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
}

#[test]
fn request_schemas_are_closed_and_carry_the_limits() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for name in [
        "StartSessionRequest",
        "AddItemRequest",
        "SetItemRequest",
        "OpsRequest",
        "AddOp",
        "SetOp",
        "RemoveOp",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"], false,
            "{name} accepts unknown fields"
        );
    }
    assert_eq!(schemas["ProductId"]["pattern"], "^[A-Za-z0-9._:-]{1,64}$");
    assert_eq!(
        schemas["AddItemRequest"]["properties"]["quantity"]["type"],
        "integer"
    );
    assert_eq!(
        schemas["AddItemRequest"]["properties"]["quantity"]["minimum"],
        1
    );
    assert_eq!(
        schemas["SetItemRequest"]["properties"]["quantity"]["minimum"],
        0
    );
    assert_eq!(schemas["OpsRequest"]["properties"]["ops"]["maxItems"], 100);
    assert_eq!(schemas["OpId"]["minLength"], 1);
    assert_eq!(schemas["OpId"]["maxLength"], 64);
    assert!(schemas["RemoveOp"]["properties"].get("quantity").is_none());
    // Every request body names one of those schemas.
    for (method, path, op) in operations(&doc) {
        if let Some(body) = op.get("requestBody") {
            let schema = resolve(&doc, &body["content"]["application/json"]["schema"]);
            assert_eq!(
                schema["additionalProperties"], false,
                "{method} {path}: open request body"
            );
        }
    }
}

#[test]
fn response_schemas_match_the_wire_shapes() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> BTreeSet<String> {
        schemas[name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        required("Cart"),
        set(&[
            "cart_id",
            "version",
            "owner",
            "items",
            "item_count",
            "line_count",
            "updated_at"
        ])
    );
    assert_eq!(
        schemas["Cart"]["properties"]["updated_at"]["type"],
        serde_json::json!(["string", "null"])
    );
    assert_eq!(
        required("CartItem"),
        set(&["product_id", "quantity", "added_at", "updated_at"])
    );
    assert_eq!(required("OpsResponse"), set(&["cart", "results"]));
    assert_eq!(required("OpResult"), set(&["op_id", "status"]));
    assert_eq!(
        schemas["OpStatus"]["enum"],
        serde_json::json!(["applied", "duplicate", "conflict", "rejected"])
    );
    assert_eq!(
        required("Session"),
        set(&[
            "session_token",
            "expires_at",
            "idle_timeout_seconds",
            "cart_id",
            "cart_token",
            "recovered"
        ])
    );
    assert_eq!(
        required("WhoAmI"),
        set(&["kind", "user_id", "cart_id", "expires_at", "last_active"])
    );
    assert_eq!(required("Problem"), set(&["type", "title", "status"]));
    let problem = &schemas["Problem"]["properties"];
    for member in ["detail", "errors", "cart"] {
        assert!(problem[member].is_object(), "Problem.{member}");
    }
    assert_eq!(required("FieldProblem"), set(&["field", "message"]));
}

#[actix_web::test]
async fn the_document_and_the_docs_page_are_served() {
    let app = init_service(gateway()).await;

    let res = call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/json"
    );
    let served: Value = read_body_json(res).await;
    assert_eq!(served, document());

    for page in ["/docs", "/docs/"] {
        let res = call_service(&app, TestRequest::get().uri(page).to_request()).await;
        assert_eq!(res.status(), 200, "{page}");
        assert!(res
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = String::from_utf8(read_body(res).await.to_vec()).unwrap();
        assert!(html.contains("swagger-ui"), "{page}");
        // Its assets come from the gateway, below /docs/ wherever the page was served.
        assert!(html.contains("<base href=\"/docs/\""), "{page}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{page} links outside"
        );
    }

    let res = call_service(
        &app,
        TestRequest::get()
            .uri("/docs/swagger-initializer.js")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let js = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    assert!(js.contains("\"/openapi.json\""), "{js}");
    assert!(js.contains("\"validatorUrl\": \"none\""), "{js}");

    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
        "index.css",
    ] {
        let res = call_service(
            &app,
            TestRequest::get()
                .uri(&format!("/docs/{asset}"))
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), 200, "{asset}");
    }
    let res = call_service(&app, TestRequest::get().uri("/docs/nope.js").to_request()).await;
    assert_eq!(res.status(), 404);
}
