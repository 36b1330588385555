use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::guest::Guest;
use crate::platform::Platform;
use crate::reply::Reply;

/// A logged-in user on one device, calling the gateway with `Authorization: Bearer`.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub password: String,
    pub user_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    /// The `200` of the login that gave this device its tokens.
    pub login: Reply,
    client: reqwest::Client,
    gateway_url: String,
}

/// A fresh, unique email for a test account.
pub fn new_email() -> String {
    format!("shopper-{}@example.com", Uuid::new_v4().simple())
}

impl Platform {
    /// `POST /api/v1/auth/register`.
    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.send(
            self.gateway(Method::POST, "/api/v1/auth/register")
                .json(&json!({ "email": email, "password": password })),
        )
        .await
    }

    /// `POST /api/v1/auth/login`, optionally carrying a guest's session token.
    pub async fn login_reply(&self, email: &str, password: &str, guest: Option<&Guest>) -> Reply {
        let mut rb = self
            .gateway(Method::POST, "/api/v1/auth/login")
            .json(&json!({ "email": email, "password": password }));
        if let Some(g) = guest {
            rb = rb.header("x-session-token", &g.session_token);
        }
        self.send(rb).await
    }

    /// Logs in (checked to be a 200) and returns the device's tokens.
    pub async fn login(&self, email: &str, password: &str, guest: Option<&Guest>) -> User {
        let login = self.login_reply(email, password, guest).await;
        login.assert_status(200, "POST /api/v1/auth/login");
        let body = login.json();
        let text = |name: &str| {
            body.get(name)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("the login has no string `{name}`: {login}"))
                .to_owned()
        };
        User {
            email: email.to_owned(),
            password: password.to_owned(),
            user_id: Uuid::parse_str(&text("user_id")).expect("user_id is a UUID"),
            access_token: text("access_token"),
            refresh_token: text("refresh_token"),
            client: self.client().clone(),
            gateway_url: self.gateway_url().to_owned(),
            login,
        }
    }

    /// Registers a new account (checked to be a 201) and logs it in.
    pub async fn new_user(&self, guest: Option<&Guest>) -> User {
        let email = new_email();
        let password = "correct horse battery staple";
        self.register(&email, password)
            .await
            .assert_status(201, "POST /api/v1/auth/register");
        self.login(&email, password, guest).await
    }
}

impl User {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.gateway_url))
            .bearer_auth(&self.access_token)
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        Reply::through_gateway(request).await
    }

    /// The same device holding other tokens (e.g. after a refresh).
    pub fn with_tokens(&self, access_token: &str, refresh_token: &str) -> User {
        User {
            access_token: access_token.to_owned(),
            refresh_token: refresh_token.to_owned(),
            ..self.clone()
        }
    }

    /// The cart of the login response.
    pub fn login_cart(&self) -> crate::CartView {
        crate::CartView::parse(&self.login.json()["cart"], "the login's cart")
    }

    pub async fn get_cart(&self) -> Reply {
        self.send(self.request(Method::GET, "/api/v1/cart")).await
    }

    pub async fn current_cart(&self) -> crate::CartView {
        self.get_cart().await.cart("GET /api/v1/cart (user)")
    }

    pub async fn add_item(&self, product_id: &str, quantity: i64) -> Reply {
        self.send(
            self.request(Method::POST, "/api/v1/cart/items")
                .json(&json!({"product_id": product_id, "quantity": quantity})),
        )
        .await
    }

    pub async fn whoami(&self) -> Reply {
        self.send(self.request(Method::GET, "/api/v1/session"))
            .await
    }

    pub async fn logout(&self) -> Reply {
        self.send(self.request(Method::POST, "/api/v1/auth/logout"))
            .await
    }

    /// `POST /api/v1/auth/refresh` with a given refresh token.
    pub async fn refresh_with(&self, refresh_token: &str) -> Reply {
        self.send(
            self.client
                .post(format!("{}/api/v1/auth/refresh", self.gateway_url))
                .json(&json!({ "refresh_token": refresh_token })),
        )
        .await
    }
}
