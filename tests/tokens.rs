//! Application tokens against a running server: a token issued for one
//! application reaches that application's routes and no others, and stops
//! working once it expires, logs out or is expired by the admin.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use common::{
    error_location, eventually, Answer, Api, Hookd, Receiver, Settings, EVENT_TYPE, WAIT,
};

/// What an application token may do on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed on its own application, with this status there.
    Own(u16),
    /// Allowed whatever the application, with this status.
    Shared(u16),
    /// Never allowed: 403.
    Forbidden,
    /// `POST /auth/logout`, which revokes the token. The walks skip it, and
    /// `logout_revokes_only_that_token` covers it.
    Logout,
}

/// A route behind the token check, as declared in `src/api`, relative to `/api/v1`.
struct Route {
    method: &'static str,
    path: &'static str,
    access: Access,
}

const fn route(method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

use Access::{Forbidden, Logout, Own, Shared};

/// Every route behind the token check. `route_table_covers_every_declared_route`
/// fails when a route is added to `src/api` without being added here.
const ROUTES: &[Route] = &[
    // applications.rs
    route("GET", "/app", Forbidden),
    route("POST", "/app", Forbidden),
    route("GET", "/app/{app_id}", Own(200)),
    route("PUT", "/app/{app_id}", Forbidden),
    route("PATCH", "/app/{app_id}", Forbidden),
    route("DELETE", "/app/{app_id}", Forbidden),
    // event_types.rs
    route("GET", "/event-type", Shared(200)),
    route("POST", "/event-type", Forbidden),
    route("GET", "/event-type/{name}", Shared(200)),
    route("PUT", "/event-type/{name}", Forbidden),
    route("PATCH", "/event-type/{name}", Forbidden),
    route("DELETE", "/event-type/{name}", Forbidden),
    // endpoints.rs
    route("GET", "/app/{app_id}/endpoint", Own(200)),
    route("POST", "/app/{app_id}/endpoint", Own(201)),
    route("GET", "/app/{app_id}/endpoint/{endpoint_id}", Own(200)),
    route("PUT", "/app/{app_id}/endpoint/{endpoint_id}", Own(200)),
    route("PATCH", "/app/{app_id}/endpoint/{endpoint_id}", Own(200)),
    route("DELETE", "/app/{app_id}/endpoint/{endpoint_id}", Own(204)),
    route(
        "GET",
        "/app/{app_id}/endpoint/{endpoint_id}/secret",
        Own(200),
    ),
    route(
        "POST",
        "/app/{app_id}/endpoint/{endpoint_id}/secret/rotate",
        Own(200),
    ),
    route(
        "GET",
        "/app/{app_id}/endpoint/{endpoint_id}/headers",
        Own(200),
    ),
    route(
        "PUT",
        "/app/{app_id}/endpoint/{endpoint_id}/headers",
        Own(204),
    ),
    route(
        "PATCH",
        "/app/{app_id}/endpoint/{endpoint_id}/headers",
        Own(204),
    ),
    route(
        "GET",
        "/app/{app_id}/endpoint/{endpoint_id}/stats",
        Own(200),
    ),
    route(
        "POST",
        "/app/{app_id}/endpoint/{endpoint_id}/recover",
        Own(202),
    ),
    // examples.rs
    route(
        "POST",
        "/app/{app_id}/endpoint/{endpoint_id}/send-example",
        Own(202),
    ),
    // messages.rs
    route("GET", "/app/{app_id}/msg", Own(200)),
    route("POST", "/app/{app_id}/msg", Own(202)),
    route("GET", "/app/{app_id}/msg/{msg_id}", Own(200)),
    route("DELETE", "/app/{app_id}/msg/{msg_id}/content", Own(204)),
    route("GET", "/app/{app_id}/msg/{msg_id}/endpoint", Own(200)),
    route(
        "POST",
        "/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend",
        Own(202),
    ),
    // recovery.rs
    route(
        "POST",
        "/app/{app_id}/endpoint/{endpoint_id}/replay-missing",
        Own(202),
    ),
    route(
        "POST",
        "/app/{app_id}/endpoint/{endpoint_id}/bulk-replay",
        Own(202),
    ),
    // Each token sees only its own application's tasks, so these answer
    // whatever the application; `task_list_shows_only_own_tasks` checks the
    // contents.
    route("GET", "/background-task", Shared(200)),
    route("GET", "/background-task/{task_id}", Shared(404)),
    // poller.rs
    route("GET", "/app/{app_id}/poller/{sink_id}", Own(200)),
    route(
        "GET",
        "/app/{app_id}/poller/{sink_id}/consumer/{consumer_id}",
        Own(200),
    ),
    route(
        "POST",
        "/app/{app_id}/poller/{sink_id}/consumer/{consumer_id}/seek",
        Own(200),
    ),
    // attempts.rs
    route(
        "GET",
        "/app/{app_id}/attempt/endpoint/{endpoint_id}",
        Own(200),
    ),
    route("GET", "/app/{app_id}/attempt/msg/{msg_id}", Own(200)),
    route(
        "GET",
        "/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}",
        Own(200),
    ),
    route(
        "DELETE",
        "/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}/content",
        Own(204),
    ),
    route("GET", "/app/{app_id}/endpoint/{endpoint_id}/msg", Own(200)),
    // sources.rs
    route("GET", "/source", Forbidden),
    route("GET", "/source/{name}", Forbidden),
    route("GET", "/source/{name}/dead-letter", Forbidden),
    // tokens.rs
    route("POST", "/auth/app-portal-access/{app_id}", Forbidden),
    route("POST", "/auth/dashboard-access/{app_id}", Forbidden),
    route("POST", "/auth/logout", Logout),
    route("POST", "/auth/app/{app_id}/expire-all", Forbidden),
];

/// Routes of `src/api/mod.rs` that need no token at all.
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/health"),
];

/// The resources of one application that the walks use.
#[derive(Debug, Clone)]
struct Tenant {
    app_id: String,
    uid: String,
    endpoint: String,
    msg: String,
    attempt: String,
}

/// The values that fill a route's path parameters.
#[derive(Debug, Clone)]
struct PathValues {
    app: String,
    endpoint: String,
    msg: String,
    attempt: String,
}

impl PathValues {
    fn of(tenant: &Tenant) -> Self {
        Self {
            app: tenant.app_id.clone(),
            endpoint: tenant.endpoint.clone(),
            msg: tenant.msg.clone(),
            attempt: tenant.attempt.clone(),
        }
    }

    /// Fills the parameters of a route template and prefixes `/api/v1`.
    fn path(&self, template: &str) -> String {
        let name = if template.starts_with("/source") {
            "no-such-source"
        } else {
            EVENT_TYPE
        };
        let filled = template
            .replace("{app_id}", &self.app)
            .replace("{endpoint_id}", &self.endpoint)
            .replace("{sink_id}", &self.endpoint)
            .replace("{consumer_id}", "walker")
            .replace("{task_id}", "qtask_01JZZZZZZZZZZZZZZZZZZZZZZZ")
            .replace("{msg_id}", &self.msg)
            .replace("{attempt_id}", &self.attempt)
            .replace("{name}", name);
        format!("/api/v1{filled}")
    }
}

/// Returns a valid request body for a route, or `None` for a route without one.
fn body_for(method: &str, template: &str, receiver_url: &str) -> Option<Value> {
    let since = "2000-01-01T00:00:00Z";
    let body = match (method, template) {
        ("POST", "/app") | ("PUT", "/app/{app_id}") => json!({"name": "walk"}),
        ("PATCH", "/app/{app_id}") => json!({"name": "walked"}),
        ("POST", "/event-type") => json!({"name": "walk.created", "description": "walk"}),
        ("PUT", "/event-type/{name}") => json!({"description": "walk"}),
        ("PATCH", "/event-type/{name}") => json!({"description": "walked"}),
        ("POST", "/app/{app_id}/endpoint") | ("PUT", "/app/{app_id}/endpoint/{endpoint_id}") => {
            json!({"url": receiver_url})
        }
        ("PATCH", "/app/{app_id}/endpoint/{endpoint_id}") => json!({"description": "walked"}),
        ("POST", "/app/{app_id}/endpoint/{endpoint_id}/secret/rotate") => json!({}),
        ("PUT", "/app/{app_id}/endpoint/{endpoint_id}/headers") => {
            json!({"headers": {"x-walk": "1"}})
        }
        ("PATCH", "/app/{app_id}/endpoint/{endpoint_id}/headers") => {
            json!({"headers": {"x-walk": "2"}})
        }
        ("POST", "/app/{app_id}/endpoint/{endpoint_id}/recover") => json!({"since": since}),
        ("POST", "/app/{app_id}/endpoint/{endpoint_id}/send-example") => {
            json!({"eventType": EVENT_TYPE})
        }
        ("POST", "/app/{app_id}/msg") => json!({"eventType": EVENT_TYPE, "payload": {"walk": 1}}),
        ("POST", "/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend") => json!({}),
        ("POST", "/app/{app_id}/endpoint/{endpoint_id}/replay-missing")
        | ("POST", "/app/{app_id}/endpoint/{endpoint_id}/bulk-replay") => json!({"since": since}),
        ("POST", "/app/{app_id}/poller/{sink_id}/consumer/{consumer_id}/seek") => {
            json!({"after": since})
        }
        ("POST", "/auth/app-portal-access/{app_id}")
        | ("POST", "/auth/dashboard-access/{app_id}")
        | ("POST", "/auth/app/{app_id}/expire-all") => json!({}),
        _ => return None,
    };
    Some(body)
}

async fn call(api: &Api, method: &str, path: &str, body: Option<&Value>) -> common::Reply {
    let method = Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
    api.call(method, path, body).await
}

/// Creates an application with this uid, one endpoint to `receiver`, and one
/// message with its first attempt.
async fn create_tenant(admin: &Api, uid: &str, receiver: &Receiver) -> Tenant {
    let reply = admin
        .post("/api/v1/app", &json!({"name": uid, "uid": uid}))
        .await;
    assert_eq!(reply.status, 201, "POST /api/v1/app: {:?}", reply.body);
    let app_id = common::id_of(&reply.body);
    let endpoint = admin.create_endpoint(&app_id, &receiver.url()).await;
    let msg = admin.send_message(&app_id, r#"{"tenant":1}"#).await;
    let attempt = eventually(WAIT, "the first attempt of the message", || async {
        let attempts = admin.attempts_for_message(&app_id, &msg).await;
        attempts.first().map(common::id_of)
    })
    .await;
    Tenant {
        app_id,
        uid: uid.to_owned(),
        endpoint,
        msg,
        attempt,
    }
}

/// Issues an application token with this request body and returns it.
async fn issue_token(admin: &Api, app: &str, body: Value) -> String {
    let path = format!("/api/v1/auth/app-portal-access/{app}");
    let reply = admin.post(&path, &body).await;
    assert_eq!(reply.status, 200, "POST {path} {body}: {:?}", reply.body);
    reply.body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("POST {path} returned no token: {:?}", reply.body))
        .to_owned()
}

/// Creates the event type the messages and send-example use.
async fn create_event_type(admin: &Api) {
    let reply = admin
        .post(
            "/api/v1/event-type",
            &json!({
                "name": EVENT_TYPE,
                "description": "test",
                "schemas": {"1": {"type": "object", "examples": [{"example": true}]}}
            }),
        )
        .await;
    assert_eq!(
        reply.status, 201,
        "POST /api/v1/event-type: {:?}",
        reply.body
    );
}

/// Reads every `.route(` call in `src/api` and returns its methods and
/// path, with `/api/v1` in front of those the API router nests.
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read src/api") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let nested = path.file_name().is_none_or(|name| name != "mod.rs");
        let mut rest = text.as_str();
        while let Some(start) = rest.find(".route(") {
            let call = &rest[start + ".route(".len()..];
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(index, _)| index)
                .unwrap_or_else(|| panic!("unclosed .route( in {}", path.display()));
            let arguments = &call[..end];
            let route = arguments
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("a .route( without a path in {}", path.display()));
            let route = if nested {
                format!("/api/v1{route}")
            } else {
                route.to_owned()
            };
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = arguments
                    .match_indices(&format!("{method}("))
                    .any(|(at, _)| {
                        at == 0
                            || !arguments.as_bytes()[at - 1].is_ascii_alphanumeric()
                                && arguments.as_bytes()[at - 1] != b'_'
                    });
                if called {
                    routes.insert((method.to_uppercase(), route.clone()));
                }
            }
            rest = &call[end..];
        }
    }
    routes
}

#[test]
fn route_table_covers_every_declared_route() {
    let declared = declared_routes();
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), format!("/api/v1{}", r.path)))
        .chain(
            PUBLIC_ROUTES
                .iter()
                .map(|(method, path)| (method.to_string(), path.to_string())),
        )
        .collect();

    let missing: Vec<_> = declared.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&declared).collect();

    assert!(
        missing.is_empty(),
        "routes in src/api that the token walk does not cover; add them to ROUTES: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "ROUTES lists routes that src/api does not declare: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_is_refused_on_other_applications() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    create_event_type(&hookd).await;
    let a = create_tenant(&hookd, "tenant-a", &receiver).await;
    let b = create_tenant(&hookd, "tenant-b", &receiver).await;
    let b_secret = hookd.endpoint_secret(&b.app_id, &b.endpoint).await;
    let token = issue_token(&hookd, &a.app_id, json!({})).await;
    let as_a = hookd.with_token(&token);

    // Every route with B's application in the path, by id and by uid, and
    // with an application that does not exist: 403, whatever the method.
    let unknown = PathValues {
        app: "no-such-app".to_owned(),
        ..PathValues::of(&b)
    };
    let by_uid = PathValues {
        app: b.uid.clone(),
        ..PathValues::of(&b)
    };
    for values in [PathValues::of(&b), by_uid, unknown] {
        for route in ROUTES {
            let expected = match route.access {
                Shared(status) => status,
                Own(_) | Forbidden => 403,
                Logout => continue,
            };
            let path = values.path(route.path);
            let body = body_for(route.method, route.path, &receiver.url());
            let reply = call(&as_a, route.method, &path, body.as_ref()).await;
            assert_eq!(
                reply.status, expected,
                "{} {path} with A's token: {:?}",
                route.method, reply.body
            );
            if expected == 403 {
                assert_eq!(reply.body["code"], "forbidden", "{} {path}", route.method);
            }
        }
    }

    // A's application in the path with one of B's endpoint, message or
    // attempt ids: 404, as for any id A does not have.
    let own = PathValues::of(&a);
    let crossed = [
        PathValues {
            endpoint: b.endpoint.clone(),
            ..own.clone()
        },
        PathValues {
            msg: b.msg.clone(),
            ..own.clone()
        },
        PathValues {
            attempt: b.attempt.clone(),
            ..own.clone()
        },
    ];
    for values in crossed {
        for route in ROUTES.iter().filter(|r| matches!(r.access, Own(_))) {
            let path = values.path(route.path);
            if path == own.path(route.path) {
                continue;
            }
            let body = body_for(route.method, route.path, &receiver.url());
            let reply = call(&as_a, route.method, &path, body.as_ref()).await;
            assert_eq!(
                reply.status, 404,
                "{} {path} with A's token and one of B's ids: {:?}",
                route.method, reply.body
            );
        }
    }

    // B is as it was.
    let endpoint = hookd
        .get(&format!("/api/v1/app/{}/endpoint/{}", b.app_id, b.endpoint))
        .await;
    assert_eq!(endpoint.status, 200, "B's endpoint: {:?}", endpoint.body);
    assert_eq!(endpoint.body["description"], "", "B's endpoint was changed");
    assert_eq!(
        hookd.endpoint_secret(&b.app_id, &b.endpoint).await,
        b_secret
    );
    let headers = hookd
        .get(&format!(
            "/api/v1/app/{}/endpoint/{}/headers",
            b.app_id, b.endpoint
        ))
        .await;
    assert_eq!(
        headers.body["headers"],
        json!({}),
        "B's headers were changed"
    );
    let messages = hookd.get(&format!("/api/v1/app/{}/msg", b.app_id)).await;
    let data = messages.body["data"]
        .as_array()
        .expect("a list of messages");
    assert_eq!(data.len(), 1, "messages of B: {:?}", messages.body);
    assert_eq!(
        data[0]["payload"],
        json!({"tenant": 1}),
        "B's payload was expunged"
    );
    let app = hookd.get(&format!("/api/v1/app/{}", b.app_id)).await;
    assert_eq!(app.body["name"], "tenant-b", "B's application was changed");
    let event_type = hookd.get(&format!("/api/v1/event-type/{EVENT_TYPE}")).await;
    assert_eq!(
        event_type.body["description"], "test",
        "the event type was changed"
    );
    assert_eq!(
        event_type.body["archived"], false,
        "the event type was archived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_works_on_its_own_application() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    create_event_type(&hookd).await;
    let a = create_tenant(&hookd, "tenant-a", &receiver).await;
    let token = issue_token(&hookd, &a.uid, json!({})).await;
    let as_a = hookd.with_token(&token);

    // DELETE routes go last, so that deleting the endpoint leaves the other
    // routes something to act on. The uid in the path works like the id.
    let (deletes, others): (Vec<&Route>, Vec<&Route>) =
        ROUTES.iter().partition(|r| r.method == "DELETE");
    for (index, route) in others.into_iter().chain(deletes).enumerate() {
        let expected = match route.access {
            Own(status) | Shared(status) => status,
            Forbidden => 403,
            Logout => continue,
        };
        let values = PathValues {
            app: if index % 2 == 0 {
                a.app_id.clone()
            } else {
                a.uid.clone()
            },
            ..PathValues::of(&a)
        };
        let path = values.path(route.path);
        let body = body_for(route.method, route.path, &receiver.url());
        let reply = call(&as_a, route.method, &path, body.as_ref()).await;
        assert_eq!(
            reply.status, expected,
            "{} {path} with A's own token: {:?}",
            route.method, reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_portal_access_returns_svix_shape() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let reply = hookd
        .call(
            Method::POST,
            &format!("/api/v1/auth/app-portal-access/{app}"),
            None,
        )
        .await;

    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let fields: BTreeSet<&str> = reply
        .body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["token", "url"]));
    assert_eq!(reply.body["url"], format!("/api/v1/app/{app}"));
    let token = reply.body["token"].as_str().expect("a token string");
    assert!(token.starts_with("hkapp_"), "{token}");
    let own = hookd
        .with_token(token)
        .get(&format!("/api/v1/app/{app}"))
        .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_portal_access_rejects_invalid_input() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let path = format!("/api/v1/auth/app-portal-access/{app}");

    for (body, field) in [
        (json!({"expiry": 0}), "expiry"),
        (json!({"expiry": 604_801}), "expiry"),
        (json!({"featureFlags": ["not a flag"]}), "featureFlags"),
        (json!({"sessionId": ""}), "sessionId"),
        (json!({"capabilities": ["ViewBase"]}), "capabilities"),
    ] {
        let reply = hookd.post(&path, &body).await;
        assert_eq!(reply.status, 422, "{body}: {:?}", reply.body);
        assert_eq!(error_location(&reply.body), ["body", field], "{body}");
    }

    let missing = hookd
        .post("/api/v1/auth/app-portal-access/no-such-app", &json!({}))
        .await;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_cannot_issue_tokens() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let token = issue_token(&hookd, &app, json!({})).await;

    for path in [
        format!("/api/v1/auth/app-portal-access/{app}"),
        format!("/api/v1/auth/dashboard-access/{app}"),
        format!("/api/v1/auth/app/{app}/expire-all"),
    ] {
        let reply = hookd.with_token(&token).post(&path, &json!({})).await;
        assert_eq!(reply.status, 403, "POST {path}: {:?}", reply.body);
        assert_eq!(reply.body["code"], "forbidden", "POST {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_expires_after_its_expiry() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let token = issue_token(&hookd, &app, json!({"expiry": 1})).await;

    // The token was issued before the response, so it has expired 1 s after it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reply = hookd
        .with_token(&token)
        .get(&format!("/api/v1/app/{app}"))
        .await;

    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "authentication_failed");
    assert_eq!(
        reply.body["detail"],
        "this token has expired; request a new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_only_that_token() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let first = issue_token(&hookd, &app, json!({})).await;
    let second = issue_token(&hookd, &app, json!({})).await;
    let app_path = format!("/api/v1/app/{app}");

    let logout = hookd
        .with_token(&first)
        .call(Method::POST, "/api/v1/auth/logout", None)
        .await;

    assert_eq!(logout.status, 204, "{:?}", logout.body);
    let revoked = hookd.with_token(&first).get(&app_path).await;
    assert_eq!(revoked.status, 401, "{:?}", revoked.body);
    assert_eq!(revoked.body["detail"], "this token was logged out");
    let other = hookd.with_token(&second).get(&app_path).await;
    assert_eq!(other.status, 200, "{:?}", other.body);
    let admin = hookd.call(Method::POST, "/api/v1/auth/logout", None).await;
    assert_eq!(admin.status, 403, "{:?}", admin.body);
    assert_eq!(hookd.get("/api/v1/app").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_all_ends_the_selected_sessions() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let first = issue_token(&hookd, &app, json!({"sessionId": "s1"})).await;
    let second = issue_token(&hookd, &app, json!({"sessionId": "s2"})).await;
    let other_app = hookd.create_app().await;
    let bystander = issue_token(&hookd, &other_app, json!({})).await;
    let expire = format!("/api/v1/auth/app/{app}/expire-all");
    let status = |token: String, app: String| {
        let api = hookd.with_token(&token);
        async move { api.get(&format!("/api/v1/app/{app}")).await.status }
    };

    // A later expiry leaves the tokens working.
    let later = hookd.post(&expire, &json!({"expiry": 3600})).await;
    assert_eq!(later.status, 204, "{:?}", later.body);
    assert_eq!(status(first.clone(), app.clone()).await, 200);

    let first_session = hookd.post(&expire, &json!({"sessionIds": ["s1"]})).await;
    assert_eq!(first_session.status, 204, "{:?}", first_session.body);
    assert_eq!(status(first.clone(), app.clone()).await, 401);
    assert_eq!(status(second.clone(), app.clone()).await, 200);

    let all = hookd.call(Method::POST, &expire, None).await;
    assert_eq!(all.status, 204, "{:?}", all.body);
    assert_eq!(status(second, app.clone()).await, 401);
    assert_eq!(status(bystander, other_app).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_application_invalidates_its_tokens() {
    let hookd = Hookd::start().await;
    let created = hookd
        .post("/api/v1/app", &json!({"name": "gone", "uid": "gone"}))
        .await;
    let app = common::id_of(&created.body);
    let token = issue_token(&hookd, &app, json!({})).await;

    let deleted = hookd
        .call(Method::DELETE, &format!("/api/v1/app/{app}"), None)
        .await;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    let again = hookd
        .post("/api/v1/app", &json!({"name": "again", "uid": "gone"}))
        .await;
    assert_eq!(again.status, 201, "{:?}", again.body);

    let reply = hookd.with_token(&token).get("/api/v1/app/gone").await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert_eq!(reply.body["detail"], "invalid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token_may_only_read() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let token = issue_token(&hookd, &app, json!({"readOnly": true})).await;
    let read_only = hookd.with_token(&token);

    let list = read_only.get(&format!("/api/v1/app/{app}/endpoint")).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let secret = read_only
        .get(&format!("/api/v1/app/{app}/endpoint/{endpoint}/secret"))
        .await;
    assert_eq!(secret.status, 200, "{:?}", secret.body);
    for (method, path, body) in [
        (
            Method::POST,
            format!("/api/v1/app/{app}/endpoint"),
            json!({"url": receiver.url()}),
        ),
        (
            Method::POST,
            format!("/api/v1/app/{app}/msg"),
            json!({"eventType": EVENT_TYPE, "payload": {}}),
        ),
        (
            Method::DELETE,
            format!("/api/v1/app/{app}/endpoint/{endpoint}"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/app/{app}/endpoint/{endpoint}/secret/rotate"),
            json!({}),
        ),
    ] {
        let reply = read_only.call(method.clone(), &path, Some(&body)).await;
        assert_eq!(reply.status, 403, "{method} {path}: {:?}", reply.body);
        assert_eq!(reply.body["detail"], "this application token is read-only");
    }
    let logout = read_only
        .call(Method::POST, "/api/v1/auth/logout", None)
        .await;
    assert_eq!(logout.status, 204, "{:?}", logout.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_flags_gate_event_types() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    for (name, flags) in [
        ("open.event", json!(null)),
        ("beta.event", json!(["beta"])),
        ("both.event", json!(["beta", "gamma"])),
    ] {
        let reply = hookd
            .post(
                "/api/v1/event-type",
                &json!({"name": name, "description": name, "featureFlags": flags}),
            )
            .await;
        assert_eq!(reply.status, 201, "{name}: {:?}", reply.body);
    }
    let names = |api: Api| async move {
        let reply = api.get("/api/v1/event-type").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| e["name"].as_str().expect("a name").to_owned())
            .collect::<Vec<_>>()
    };
    let plain = hookd.with_token(&issue_token(&hookd, &app, json!({})).await);
    let beta =
        hookd.with_token(&issue_token(&hookd, &app, json!({"featureFlags": ["beta"]})).await);

    assert_eq!(
        names(hookd.api.clone()).await,
        ["beta.event", "both.event", "open.event"]
    );
    assert_eq!(names(plain.clone()).await, ["open.event"]);
    assert_eq!(names(beta.clone()).await, ["beta.event", "open.event"]);
    assert_eq!(plain.get("/api/v1/event-type/beta.event").await.status, 404);
    assert_eq!(beta.get("/api/v1/event-type/beta.event").await.status, 200);
    assert_eq!(beta.get("/api/v1/event-type/both.event").await.status, 404);
    let example = format!("/api/v1/app/{app}/endpoint/{endpoint}/send-example");
    let hidden = plain
        .post(&example, &json!({"eventType": "beta.event"}))
        .await;
    assert_eq!(hidden.status, 404, "{:?}", hidden.body);
    let visible = beta
        .post(&example, &json!({"eventType": "beta.event"}))
        .await;
    assert_eq!(visible.status, 202, "{:?}", visible.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_token_has_its_own_rate_budget() {
    let hookd = Settings::new()
        .set("HOOKD_API_REQUESTS_PER_SECOND", "3")
        .start()
        .await;
    let app = hookd.create_app().await;
    let token = issue_token(&hookd, &app, json!({})).await;
    let app_path = format!("/api/v1/app/{app}");

    // Spend the admin token's budget until it gets 429.
    let mut admin_limited = false;
    for _ in 0..100 {
        if hookd.get(&app_path).await.status == 429 {
            admin_limited = true;
            break;
        }
    }
    assert!(
        admin_limited,
        "100 admin requests at 3 per second got no 429"
    );

    let reply = hookd.with_token(&token).get(&app_path).await;
    assert_eq!(
        reply.status, 200,
        "the app token was limited with the admin token: {:?}",
        reply.body
    );
}

#[tokio::test]
async fn task_list_shows_only_own_tasks() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let mut tasks = Vec::new();
    let mut tokens = Vec::new();
    for uid in ["tenant-a", "tenant-b"] {
        let tenant = create_tenant(&hookd, uid, &receiver).await;
        let reply = hookd
            .post(
                &format!(
                    "/api/v1/app/{}/endpoint/{}/replay-missing",
                    tenant.app_id, tenant.endpoint
                ),
                &json!({"since": "2000-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        tasks.push(common::id_of(&reply.body));
        let reply = hookd
            .post(
                &format!("/api/v1/auth/app-portal-access/{}", tenant.app_id),
                &json!({}),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let token = reply.body["token"].as_str().expect("a token").to_owned();
        tokens.push(hookd.api.with_token(&token));
    }

    let own = tokens[0]
        .get(&format!("/api/v1/background-task/{}", tasks[0]))
        .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    let other = tokens[0]
        .get(&format!("/api/v1/background-task/{}", tasks[1]))
        .await;
    assert_eq!(other.status, 404, "{:?}", other.body);
    let listed = tokens[0].get("/api/v1/background-task").await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let ids: Vec<String> = listed.body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(common::id_of)
        .collect();
    assert_eq!(ids, vec![tasks[0].clone()]);
    let admin = hookd.get("/api/v1/background-task").await;
    assert_eq!(admin.body["data"].as_array().map(Vec::len), Some(2));
}
