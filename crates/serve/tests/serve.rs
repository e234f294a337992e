//! The server on an ephemeral loopback port, with runs trained on synthetic data: every endpoint,
//! every kind of bad input, reload (good and broken run folders), the in-flight bound, graceful
//! shutdown, and the page in headless Chromium.

mod common;

use std::time::Duration;

use common::http::Connection;
use common::{Running, runs};
use dssm_recommend::{IndexKind, Query, Recommender, User};
use serde_json::{Value, json};

fn ids(answer: &Value) -> Vec<u64> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {answer}"))
        .iter()
        .map(|item| item["movie_id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_the_library_does() {
    let runs = runs();
    let library = Recommender::load(&runs.a, IndexKind::Exact).unwrap();
    let server = Running::start(&runs.a, |_| {}).await;
    let key = library.user_keys()[2].clone();

    let health = server.get("/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let health = health.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model_id"], library.model_id());
    assert_eq!(health["candidates"], library.candidates());
    assert_eq!(health["uses_history"], true);

    // A known user, seen items hidden: the library's answer, with metadata.
    let body = json!({"user_id": key.parse::<u64>().unwrap(), "k": 5, "exclude_seen": true});
    let answer = server.post("/v1/recommend", &body.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.header("x-total-time").is_some());
    let answer = answer.json();
    let mut query = Query::new(User::Known(key.clone()), 5);
    query.exclude_seen = true;
    let expected = library.recommend(&query).unwrap();
    let expected_ids: Vec<u64> = expected.items.iter().map(|s| u64::from(s.id)).collect();
    assert_eq!(ids(&answer), expected_ids);
    assert_eq!(answer["model_id"], library.model_id());
    assert!(answer["took_ms"].as_f64().unwrap() >= 0.0);
    let first = &answer["items"][0];
    let item = library.item(expected.items[0].id).unwrap();
    assert_eq!(first["title"], item.attribute("title").unwrap());
    assert_eq!(first["genres"], item.attribute("genres").unwrap());
    assert!(first.get("year").is_some() && first["score"].is_number());
    let seen = library.seen(&key).unwrap();
    assert!(ids(&answer).iter().all(|id| !seen.contains(&(*id as u32))));

    // A new user by features and recent items; the recent items move the answer.
    // The user's three newest items, oldest first.
    let history = library.history(&key).unwrap();
    let recent: Vec<u32> = history[history.len() - 3..].to_vec();
    let new_user = json!({
        "features": {"gender": "F", "age": 25, "occupation": 4, "zip_code": "48067"},
        "recent_items": recent, "k": 10, "exclude": [recent[2]]
    });
    let answer = server.post("/v1/recommend", &new_user.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let with_recent = ids(&answer.json());
    assert_eq!(with_recent.len(), 10);
    assert!(!with_recent.contains(&u64::from(recent[2])));
    let no_recent = json!({"features": {"gender": "F", "age": 25}, "k": 10});
    let answer = server
        .post("/v1/recommend", &no_recent.to_string())
        .await
        .json();
    assert_ne!(ids(&answer), with_recent);

    // The user vector: the precomputed one of the known user, unit length (cosine-like towers).
    let answer = server
        .post("/v1/user-embedding", &json!({"user_id": key}).to_string())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let vector: Vec<f32> = serde_json::from_value(answer["embedding"].clone()).unwrap();
    let expected = library
        .user_vector(&Query::new(User::Known(key.clone()), 10))
        .unwrap();
    assert_eq!(vector, expected.vector);
    assert_eq!(answer["dim"], library.dim());

    // Item to item: k neighbours, never the item itself.
    let movie = expected_ids[0];
    let answer = server.get(&format!("/v1/items/{movie}/similar?k=7")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(ids(&answer).len(), 7);
    assert!(!ids(&answer).contains(&movie));
    assert_eq!(answer["item"]["movie_id"], movie);

    // Metadata: an item, a search, a known user with the movies they rated last.
    let answer = server.get(&format!("/v1/items/{movie}")).await.json();
    assert_eq!(answer["title"], item_title(&library, movie));
    let word = item_title(&library, movie)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let found = server
        .get(&format!("/v1/items?q={word}&limit=5"))
        .await
        .json();
    assert!(!ids(&found).is_empty() && ids(&found).len() <= 5, "{found}");
    let user = server.get(&format!("/v1/users/{key}?recent=4")).await;
    assert_eq!(user.status, 200, "{}", user.text());
    let user = user.json();
    assert_eq!(user["recent"].as_array().unwrap().len(), 4);
    assert_eq!(
        user["interactions"],
        library.user(&key).unwrap().recent.len()
    );
    assert!(user["attributes"].get("gender").is_some(), "{user}");

    // OpenAPI: valid JSON that documents every route.
    let openapi = server.get("/openapi.json").await.json();
    for path in [
        "/v1/recommend",
        "/v1/user-embedding",
        "/v1/items",
        "/v1/items/{movie_id}",
        "/v1/items/{movie_id}/similar",
        "/v1/users/{user_id}",
        "/admin/reload",
        "/health",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<table id=\"results\">"));

    // Metrics: requests by route and status, the latency histogram, the model id.
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for line in [
        "dssm_requests_total{route=\"/v1/recommend\",status=\"200\"} 3".to_string(),
        "dssm_requests_total{route=\"/health\",status=\"200\"} 1".to_string(),
        "dssm_request_duration_seconds_count{route=\"/v1/recommend\"} 3".to_string(),
        "dssm_request_duration_seconds_bucket{route=\"/v1/recommend\",le=\"+Inf\"} 3".to_string(),
        format!("dssm_model_info{{model_id=\"{}\"}} 1", library.model_id()),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_run_answers_recent_items_for_known_and_new_users() {
    let runs = runs();
    let library = Recommender::load(&runs.sequence, IndexKind::Exact).unwrap();
    let server = Running::start(&runs.sequence, |_| {}).await;
    let key = library.user_keys()[3].clone();
    let health = server.get("/health").await.json();
    assert_eq!(health["uses_history"], true);
    let candidates: Vec<u32> = library
        .search_items("", 1000)
        .iter()
        .filter(|item| item.train_count() > 0)
        .map(|item| item.id())
        .collect();
    let recent = vec![candidates[5], candidates[9]];

    // A known user with recent items, and a new one (features and recent items, or recent items
    // alone): 200 with the library's items and vector.
    let known = json!({"user_id": key, "recent_items": recent, "k": 6});
    let new_user =
        json!({"features": {"gender": "M"}, "recent_items": recent, "k": 6, "exclude_seen": true});
    let recent_only = json!({"recent_items": recent, "k": 6});
    let mut known_query = Query::new(User::Known(key.clone()), 6);
    known_query.recent_items = recent.clone();
    let mut new_query = Query::new(User::New(vec![("gender".into(), "M".into())]), 6);
    new_query.recent_items = recent.clone();
    new_query.exclude_seen = true;
    let mut only_query = Query::new(User::New(Vec::new()), 6);
    only_query.recent_items = recent.clone();
    for (body, query) in [
        (&known, &known_query),
        (&new_user, &new_query),
        (&recent_only, &only_query),
    ] {
        let answer = server.post("/v1/recommend", &body.to_string()).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.text());
        let expected = library.recommend(query).unwrap();
        let expected: Vec<u64> = expected.items.iter().map(|s| u64::from(s.id)).collect();
        assert_eq!(ids(&answer.json()), expected, "{body}");
        assert_eq!(expected.len(), 6);
        let answer = server.post("/v1/user-embedding", &body.to_string()).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.text());
        let vector: Vec<f32> = serde_json::from_value(answer.json()["embedding"].clone()).unwrap();
        assert_eq!(vector, library.user_vector(query).unwrap().vector, "{body}");
    }
    let answer = server
        .post("/v1/recommend", &new_user.to_string())
        .await
        .json();
    assert!(
        ids(&answer)
            .iter()
            .all(|id| !recent.contains(&(*id as u32)))
    );
    // The recent items move a known user's answer.
    let plain = server
        .post("/v1/user-embedding", &json!({"user_id": key}).to_string())
        .await
        .json();
    let moved = server
        .post("/v1/user-embedding", &known.to_string())
        .await
        .json();
    assert_ne!(plain["embedding"], moved["embedding"]);

    // Unknown recent ids are still a 400 naming them.
    let bad = json!({"user_id": key, "recent_items": [recent[0], 999_997]});
    let answer = server.post("/v1/recommend", &bad.to_string()).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("recent_items: unknown movie id(s) 999997"),
        "{}",
        answer.text()
    );
    server.stop().await;
}

fn item_title(library: &Recommender, id: u64) -> String {
    library
        .item(id as u32)
        .and_then(|i| i.attribute("title"))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving() {
    let runs = runs();
    let server = Running::start(&runs.a, |c| c.body_limit = 4096).await;
    let big = format!(
        "{{\"user_id\": 1, \"exclude\": [{}]}}",
        vec!["1"; 3000].join(",")
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1,".into(),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"colour\": 2}".into(),
            422,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 999999}".into(),
            404,
            "user_id: user \"999999\" is not in the dataset",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"recent_items\": [1, 999998, 999999]}".into(),
            400,
            "recent_items: unknown movie id(s) 999998, 999999",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"features\": {\"gender\": \"M\"}, \"recent_items\": [424242]}".into(),
            400,
            "recent_items: unknown movie id(s) 424242",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"exclude\": [777777]}".into(),
            400,
            "exclude: unknown movie id(s) 777777",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"k\": 0}".into(),
            400,
            "k: must be between 1 and 1000, found 0",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"k\": 1001}".into(),
            400,
            "k: must be between 1 and 1000, found 1001",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"k\": -3}".into(),
            422,
            "k: invalid value",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"k\": \"ten\"}".into(),
            422,
            "k: invalid type",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"recent_items\": [-1]}".into(),
            422,
            "recent_items[0]",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"k\": 5}".into(),
            400,
            "user_id: give a user_id",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"user_id\": 1, \"features\": {}}".into(),
            400,
            "features: give either",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"features\": {\"gendr\": \"F\"}}".into(),
            400,
            "features.gendr: the model has no user feature",
        ),
        (
            "POST",
            "/v1/recommend",
            "{\"features\": {\"gender\": {\"x\": 1}}}".into(),
            400,
            "features.gender: expected a string",
        ),
        (
            "POST",
            "/v1/recommend",
            big,
            413,
            "body: larger than the limit",
        ),
        (
            "POST",
            "/v1/user-embedding",
            "{\"user_id\": 1, \"k\": 0}".into(),
            400,
            "k: must be between",
        ),
        ("POST", "/v1/user-embedding", "[]".into(), 422, "body:"),
        (
            "GET",
            "/v1/items/notanumber/similar",
            String::new(),
            400,
            "path:",
        ),
        (
            "GET",
            "/v1/items/999999/similar",
            String::new(),
            404,
            "movie_id: unknown movie id(s) 999999",
        ),
        (
            "GET",
            "/v1/items/1/similar?k=0",
            String::new(),
            400,
            "k: must be between 1 and 1000",
        ),
        (
            "GET",
            "/v1/items/1/similar?k=many",
            String::new(),
            400,
            "query:",
        ),
        (
            "GET",
            "/v1/items/1/similar?kk=3",
            String::new(),
            400,
            "unknown field `kk`",
        ),
        ("GET", "/v1/items/999999", String::new(), 404, "movie_id"),
        (
            "GET",
            "/v1/items?q=a&limit=0",
            String::new(),
            400,
            "limit: must be between 1 and 100",
        ),
        (
            "GET",
            "/v1/users/nobody",
            String::new(),
            404,
            "user_id: user \"nobody\"",
        ),
        (
            "GET",
            "/v2/nothing",
            String::new(),
            404,
            "path: no route /v2/nothing",
        ),
        (
            "GET",
            "/v1/recommend",
            String::new(),
            405,
            "method: GET is not allowed",
        ),
        (
            "POST",
            "/admin/reload",
            "{\"runn\": \"x\"}".into(),
            422,
            "unknown field `runn`",
        ),
    ];
    for (method, path, body, status, needle) in &cases {
        let body = (!body.is_empty() || *method == "POST").then_some(body.as_str());
        let response = common::http::request(server.addr, method, path, body).await;
        let text = response.text();
        assert_eq!(response.status, *status, "{method} {path} {body:?}: {text}");
        let json = response.json();
        let error = json["error"].as_str().unwrap_or_else(|| panic!("{text}"));
        assert!(
            error.contains(needle),
            "{method} {path}: {error:?} lacks {needle:?}"
        );
    }
    // No content type on a JSON route.
    let mut connection = Connection::open(server.addr).await.unwrap();
    let response = connection
        .send("POST", "/v1/recommend", None, b"{\"user_id\": 1}")
        .await
        .unwrap();
    assert_eq!(response.status, 415, "{}", response.text());
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap()
            .contains("content-type")
    );
    // Still serving, and no 5xx was counted.
    let ok = server.post("/v1/recommend", "{\"user_id\": 1}").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let metrics = server.get("/metrics").await.text();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
    server.stop().await;
}

/// Sends the head of a POST and part of its body: the request is admitted (it holds a permit and
/// its model snapshot) and waits for the rest.
async fn start_slow_request(addr: std::net::SocketAddr, body: &str) -> (Connection, String) {
    let mut connection = Connection::open(addr).await.unwrap();
    let head = format!(
        "POST /v1/recommend HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    connection.write(head.as_bytes()).await.unwrap();
    connection.write(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (connection, rest.to_string())
}

async fn finish(mut slow: (Connection, String)) -> common::http::Response {
    slow.0.write(slow.1.as_bytes()).await.unwrap();
    slow.0.read_response().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_atomically_and_a_broken_run_is_refused() {
    let runs = runs();
    let server = Running::start(&runs.a, |_| {}).await;
    let id = |response: common::http::Response| response.json()["model_id"].clone();
    let model_a = id(server.get("/health").await);
    let slow = start_slow_request(server.addr, "{\"user_id\": 1, \"k\": 3}").await;

    let body = json!({"run": runs.b}).to_string();
    let reloaded = server.post("/admin/reload", &body).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let reloaded = reloaded.json();
    assert_eq!(reloaded["previous_model_id"], model_a);
    let model_b = reloaded["model_id"].clone();
    assert_ne!(model_a, model_b, "two seeds, two models");
    assert_eq!(id(server.get("/health").await), model_b);
    // Admitted before the swap: answered by the old model.
    let old = finish(slow).await;
    assert_eq!(old.status, 200, "{}", old.text());
    assert_eq!(id(old), model_a);
    assert_eq!(
        id(server.post("/v1/recommend", "{\"user_id\": 1}").await),
        model_b
    );

    // A broken run folder and a missing one are refused; B keeps serving.
    for run in [runs.broken.clone(), runs.b.join("no-such-run")] {
        let refused = server
            .post("/admin/reload", &json!({"run": run}).to_string())
            .await;
        assert_eq!(refused.status, 422, "{}", refused.text());
        let error = refused.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("refused, still serving") && error.contains("cannot load the run"),
            "{error}"
        );
        assert_eq!(id(server.get("/health").await), model_b);
        let answer = server.post("/v1/recommend", "{\"user_id\": 1}").await;
        assert_eq!(answer.status, 200);
    }
    // No body: the run being served again.
    let again = server.post("/admin/reload", "").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(id(again), model_b);
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("dssm_reloads_total 2"), "{metrics}");
    assert!(
        metrics.contains("dssm_reload_failures_total 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_bound_get_a_503_at_once() {
    let runs = runs();
    let server = Running::start(&runs.a, |c| c.max_in_flight = 2).await;
    let first = start_slow_request(server.addr, "{\"user_id\": 1}").await;
    let second = start_slow_request(server.addr, "{\"user_id\": 2}").await;
    let started = std::time::Instant::now();
    let refused = server.post("/v1/recommend", "{\"user_id\": 3}").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("2 requests in flight"), "{error}");
    // Health and metrics are outside the bound.
    assert_eq!(server.get("/health").await.status, 200);
    assert!(
        server
            .get("/metrics")
            .await
            .text()
            .contains("dssm_in_flight 2")
    );
    assert_eq!(finish(first).await.status, 200);
    assert_eq!(finish(second).await.status, 200);
    let ok = server.post("/v1/recommend", "{\"user_id\": 3}").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("dssm_rejected_total 1"), "{metrics}");
    assert!(
        metrics.contains("route=\"/v1/recommend\",status=\"503\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_requests_in_flight() {
    let runs = runs();
    let server = Running::start(&runs.a, |_| {}).await;
    let addr = server.addr;
    let slow = start_slow_request(addr, "{\"user_id\": 1}").await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "a request is still in flight");
    let answer = finish(slow).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once the request is answered")
        .unwrap();
    assert!(Connection::open(addr).await.is_err(), "no longer listening");
}

/// The first Chromium found on PATH.
fn chromium() -> Option<String> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .into_iter()
    .find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_recommendations_in_headless_chromium() {
    let Some(browser) = chromium() else {
        let required = std::env::var("DSSM_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(!required, "DSSM_REQUIRE_CHROMIUM=1 but no chromium on PATH");
        println!(
            "skipped: no chromium on PATH (Debian: apt-get install chromium), so the page was not \
             checked in a browser"
        );
        return;
    };
    let runs = runs();
    let library = Recommender::load(&runs.a, IndexKind::Exact).unwrap();
    let server = Running::start(&runs.a, |_| {}).await;
    let key = library.user_keys()[4].clone();
    let mut query = Query::new(User::Known(key.clone()), 6);
    query.exclude_seen = true;
    let expected = library.recommend(&query).unwrap();
    let history = library.history(&key).unwrap();
    // The two newest, oldest first.
    let recent = &history[history.len() - 2..];
    for (url, want) in [
        (
            format!("http://{}/?user={key}&k=6", server.addr),
            Some(&expected),
        ),
        (
            format!(
                "http://{}/?gender=F&age=25&recent={},{}&k=6",
                server.addr, recent[0], recent[1]
            ),
            None,
        ),
    ] {
        let dom = dump_dom(&browser, &url).await;
        let results = dom
            .split("<table id=\"results\"")
            .nth(1)
            .and_then(|t| t.split("</table>").next())
            .unwrap_or_else(|| panic!("no results table in\n{dom}"));
        let shown: Vec<u32> = results
            .split("data-movie-id=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(shown.len(), 6, "{url}: {results}");
        if let Some(expected) = want {
            let ids: Vec<u32> = expected.items.iter().map(|s| s.id).collect();
            assert_eq!(shown, ids, "{url}");
            let title = library.item(ids[0]).unwrap().attribute("title").unwrap();
            assert!(
                results.contains(&html_escape(title)),
                "{title} in {results}"
            );
            assert!(
                dom.contains("rated last"),
                "the user's last movies are shown"
            );
        }
    }
    server.stop().await;
}

async fn dump_dom(browser: &str, url: &str) -> String {
    let (browser, url) = (browser.to_string(), url.to_string());
    let profile = tempfile::tempdir().unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                &profile_arg,
                "--virtual-time-budget=10000",
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("chromium runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
