//! The per-token API rate limit (`api_requests_per_second`), against a
//! running server.

mod common;

use std::time::{Duration, Instant};

use common::{Hookd, Settings, TOKEN};

/// Requests per second, and burst, of the limited servers below.
const RATE: u32 = 5;

/// One response of `GET /api/v1/app`: status, `Retry-After` and JSON body.
struct Response {
    status: u16,
    retry_after: Option<String>,
    body: serde_json::Value,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the HTTP client")
}

/// Sends `GET /api/v1/app` with this bearer token, or none.
async fn list_apps(client: &reqwest::Client, hookd: &Hookd, token: Option<&str>) -> Response {
    let mut request = client.get(format!("{}/api/v1/app", hookd.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /api/v1/app");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("an ASCII Retry-After").to_owned());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Response {
        status,
        retry_after,
        body,
    }
}

/// Returns the `Retry-After` of a 429, in seconds.
fn retry_after_secs(response: &Response) -> u64 {
    response
        .retry_after
        .as_deref()
        .expect("a 429 has Retry-After")
        .parse()
        .expect("Retry-After is whole seconds")
}

async fn start_limited() -> Hookd {
    Settings::new()
        .set("HOOKD_API_REQUESTS_PER_SECOND", &RATE.to_string())
        .start()
        .await
}

/// Sends requests with the admin token until one gets 429, at most 100.
/// Returns the statuses before it, the 429 itself and the time taken.
async fn spend_budget(client: &reqwest::Client, hookd: &Hookd) -> (Vec<u16>, Response, Duration) {
    let started = Instant::now();
    let mut passed = Vec::new();
    for _ in 0..100 {
        let response = list_apps(client, hookd, Some(TOKEN)).await;
        if response.status == 429 {
            return (passed, response, started.elapsed());
        }
        passed.push(response.status);
    }
    panic!("100 requests at a limit of {RATE} per second got no 429: {passed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_rate_get_429() {
    let hookd = start_limited().await;
    let client = client();

    let (passed, rejected, elapsed) = spend_budget(&client, &hookd).await;

    // The first RATE requests spend the burst; after that, one more request
    // passes for each 1/RATE s that went by.
    assert!(
        passed.len() >= RATE as usize,
        "only {} requests passed before a 429",
        passed.len()
    );
    let refilled = (elapsed.as_secs_f64() * f64::from(RATE)).ceil() as usize;
    assert!(
        passed.len() <= RATE as usize + refilled,
        "{} requests passed in {elapsed:?}",
        passed.len()
    );
    assert!(passed.iter().all(|status| *status == 200), "{passed:?}");
    assert_eq!(rejected.body["code"], "rate_limited", "{:?}", rejected.body);
    assert!(
        rejected.body["detail"].as_str().is_some(),
        "{:?}",
        rejected.body
    );
    assert_eq!(
        retry_after_secs(&rejected),
        1,
        "Retry-After at {RATE} per second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_returns_after_retry_after() {
    let hookd = start_limited().await;
    let client = client();
    let (_, rejected, _) = spend_budget(&client, &hookd).await;
    let retry_after = retry_after_secs(&rejected);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;

    let response = list_apps(&client, &hookd, Some(TOKEN)).await;
    assert_eq!(
        response.status, 200,
        "after waiting {retry_after} s: {:?}",
        response.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_do_not_spend_valid_budget() {
    let hookd = start_limited().await;
    let client = client();

    // Ten times the burst, with a wrong token and with none: each gets 401,
    // none 429.
    for token in [Some("wrong-token-of-enough-length"), None] {
        for _ in 0..10 * RATE {
            let response = list_apps(&client, &hookd, token).await;
            assert_eq!(response.status, 401, "token {token:?}: {:?}", response.body);
        }
    }

    // The valid token still has its whole burst.
    for i in 0..RATE {
        let response = list_apps(&client, &hookd, Some(TOKEN)).await;
        assert_eq!(
            response.status, 200,
            "valid request {i} after the bad ones: {:?}",
            response.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_is_off_by_default() {
    let hookd = Hookd::start().await;
    let client = client();

    let statuses = send_concurrently(&client, &hookd, 200).await;

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
}

/// Sends `count` requests with the admin token, 20 at a time, and returns
/// their statuses.
async fn send_concurrently(client: &reqwest::Client, hookd: &Hookd, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count / 20 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let client = client.clone();
            let url = format!("{}/api/v1/app", hookd.base);
            tasks.spawn(async move {
                let response = client
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("GET /api/v1/app");
                response.status().as_u16()
            });
        }
        while let Some(status) = tasks.join_next().await {
            statuses.push(status.expect("the request task does not panic"));
        }
    }
    statuses
}
