use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::reply::Reply;

/// A guest with a session, calling the gateway with `X-Session-Token`.
#[derive(Debug, Clone)]
pub struct Guest {
    pub session_token: String,
    pub cart_id: Uuid,
    pub cart_token: String,
    /// The `201` of `POST /api/v1/sessions` that started this session.
    pub created: Reply,
    client: reqwest::Client,
    gateway_url: String,
}

impl Guest {
    /// Checks the `201` of `POST /api/v1/sessions` and keeps its credentials.
    #[track_caller]
    pub(crate) fn from_created_session(
        client: reqwest::Client,
        gateway_url: String,
        created: Reply,
    ) -> Guest {
        created.assert_status(201, "POST /api/v1/sessions");
        let body = created.json();
        let text = |name: &str| {
            body.get(name)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("the new session has no string `{name}`: {created}"))
                .to_owned()
        };
        let cart_id = Uuid::parse_str(&text("cart_id"))
            .unwrap_or_else(|e| panic!("the new session's cart_id is not a UUID ({e}): {created}"));
        Guest {
            session_token: text("session_token"),
            cart_id,
            cart_token: text("cart_token"),
            client,
            gateway_url,
            created,
        }
    }

    /// A request to the gateway carrying this guest's `X-Session-Token`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.gateway_url))
            .header("x-session-token", &self.session_token)
    }

    /// A request authenticated by the `cart_session` cookie only, as a browser sends it.
    pub fn request_with_cookie(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.gateway_url))
            .header("cookie", format!("cart_session={}", self.session_token))
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        Reply::through_gateway(request).await
    }

    /// `GET /api/v1/session`.
    pub async fn whoami(&self) -> Reply {
        self.send(self.request(Method::GET, "/api/v1/session"))
            .await
    }

    /// `GET /api/v1/cart`.
    pub async fn get_cart(&self) -> Reply {
        self.send(self.request(Method::GET, "/api/v1/cart")).await
    }

    /// `GET /api/v1/cart`, checked to be a 200 carrying a cart.
    pub async fn current_cart(&self) -> crate::CartView {
        self.get_cart().await.cart("GET /api/v1/cart")
    }

    /// `POST /api/v1/cart/ops` with any JSON body (offline sync).
    pub async fn post_ops(&self, body: Value) -> Reply {
        self.send(self.request(Method::POST, "/api/v1/cart/ops").json(&body))
            .await
    }

    /// `POST /api/v1/cart/ops {"base_version", "ops"}`.
    pub async fn sync(&self, base_version: i64, ops: &[Value]) -> Reply {
        self.post_ops(json!({"base_version": base_version, "ops": ops}))
            .await
    }

    /// `POST /api/v1/cart/items {"product_id", "quantity"}`.
    pub async fn add_item(&self, product_id: &str, quantity: i64) -> Reply {
        self.post_items(json!({"product_id": product_id, "quantity": quantity}))
            .await
    }

    /// `POST /api/v1/cart/items` with any JSON body.
    pub async fn post_items(&self, body: Value) -> Reply {
        self.send(self.request(Method::POST, "/api/v1/cart/items").json(&body))
            .await
    }

    /// `PUT /api/v1/cart/items/{product_id} {"quantity"}`.
    pub async fn set_quantity(&self, product_id: &str, quantity: i64) -> Reply {
        self.send(
            self.request(Method::PUT, &format!("/api/v1/cart/items/{product_id}"))
                .json(&json!({ "quantity": quantity })),
        )
        .await
    }

    /// `DELETE /api/v1/cart/items/{product_id}`.
    pub async fn remove_item(&self, product_id: &str) -> Reply {
        self.send(self.request(Method::DELETE, &format!("/api/v1/cart/items/{product_id}")))
            .await
    }

    /// `DELETE /api/v1/cart`.
    pub async fn empty_cart(&self) -> Reply {
        self.send(self.request(Method::DELETE, "/api/v1/cart"))
            .await
    }

    /// `DELETE /api/v1/session`.
    pub async fn end_session(&self) -> Reply {
        self.send(self.request(Method::DELETE, "/api/v1/session"))
            .await
    }
}
