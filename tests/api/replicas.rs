//! Two replicas on one Postgres database, in one process: a write through either is found by a
//! search on the other (create, tag change, delete), and each reports the change feed in
//! `/readyz`. The fake model backend: what is under test is the follower, not retrieval.
//! `scripts/replicas.py` proves the same with real processes, kill -9 and a Postgres outage.
//!
//! Needs `SNAPSHOP_TEST_POSTGRES_URL` (a server where its user may create databases; each test
//! makes its own); skipped without it, unless `SNAPSHOP_REQUIRE_POSTGRES=1` (`scripts/test.sh`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::common::*;

/// A fresh database on the test server, as a URL; `None` (with a message) to skip.
async fn fresh_database(test: &str) -> Option<String> {
    let url = match std::env::var("SNAPSHOP_TEST_POSTGRES_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ if std::env::var("SNAPSHOP_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("{test}: SNAPSHOP_REQUIRE_POSTGRES=1 but SNAPSHOP_TEST_POSTGRES_URL is unset")
        }
        _ => {
            eprintln!("SKIPPED replicas::{test}: SNAPSHOP_TEST_POSTGRES_URL is unset");
            return None;
        }
    };
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a Postgres URL");
    let name = format!(
        "snapshop_replicas_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut conn = options.connect().await.expect("connect to the test server");
    conn.execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE template0"#).as_str())
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), ""), |(b, q)| (b, q));
    let cut = base
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..cut]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

async fn replica(url: &str, images: &std::path::Path, name: &str) -> TestApp {
    replica_with(url, images, name, |_| {}).await
}

async fn replica_with(
    url: &str,
    images: &std::path::Path,
    name: &str,
    tweak: impl FnOnce(&mut snapshop::config::Config),
) -> TestApp {
    let (url, images, name) = (url.to_owned(), images.to_owned(), name.to_owned());
    spawn_fake_app_with(new_data_dir(), move |c| {
        c.database_url = Some(url);
        c.storage.images_url = Some(format!("file://{}", images.display()));
        c.feed.replica = Some(name);
        c.feed.poll_ms = 100;
        tweak(c);
    })
    .await
}

/// The product ids a search restricted to `tag` returns on `app`.
async fn found(app: &TestApp, photo: &std::path::Path, tag: &str) -> Vec<String> {
    let r = app
        .search(photo, &format!("k=5&filter={tag}"))
        .await
        .assert_status(200);
    r.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["product_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (at most 20 s: a bound, not a measurement) until a search on `app` for `tag` returns
/// `want`.
async fn until_found(app: &TestApp, photo: &std::path::Path, tag: &str, want: &[&str]) {
    let started = Instant::now();
    loop {
        let got = found(app, photo, tag).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{tag}: {got:?}, never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_through_either_replica_are_found_on_the_other() {
    let Some(url) = fresh_database("writes_through_either_replica_are_found_on_the_other").await
    else {
        return;
    };
    let images = tempfile::tempdir().unwrap();
    let a = replica(&url, images.path(), "a").await;
    let b = replica(&url, images.path(), "b").await;
    let photos = fixture_photos(2);
    let product =
        |id: &str, tags: &[&str]| -> Value { json!({"id": id, "title": id, "tags": tags}) };

    a.create_product("acme", &product("p1", &["run:one"]), &photos[..1])
        .await
        .assert_status(201);
    assert_eq!(
        found(&a, &photos[1], "run:one").await,
        ["p1"],
        "at once on A"
    );
    until_found(&b, &photos[1], "run:one", &["p1"]).await;
    // The image file is in the shared storage: B serves it.
    let image_id = a.get_product("acme", "p1").await.json["images"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    b.get_image("acme", "p1", &image_id)
        .await
        .assert_status(200);

    b.patch_product("acme", "p1", &json!({"tags": ["run:two"]}))
        .await
        .assert_status(200);
    until_found(&a, &photos[1], "run:two", &["p1"]).await;
    until_found(&a, &photos[1], "run:one", &[]).await;

    a.delete_product("acme", "p1").await.assert_status(204);
    until_found(&b, &photos[1], "run:two", &[]).await;

    for app in [&a, &b] {
        let ready = app.readyz().await.assert_status(200).json;
        let feed = &ready["feed"];
        assert_eq!(ready["store"], "postgres");
        assert_eq!(ready["store_reachable"], true);
        assert_eq!(feed["error"], Value::Null, "{feed}");
        assert!(feed["applied"].as_u64().unwrap() >= 3, "{feed}");
        assert!(feed["replica"] == "a" || feed["replica"] == "b");
        let r = app.search(&photos[1], "k=1").await.assert_status(200);
        assert!(r.json["index_lag_ms"].as_i64().unwrap() >= 0);
    }
    a.stop().await;
    b.stop().await;
    drop_database(&url).await;
}

/// Drops the database `url` names (only after a passing test: a failing one leaves it to look at).
async fn drop_database(url: &str) {
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let name = options.get_database().unwrap().to_owned();
    let mut conn = options.database("postgres").connect().await.unwrap();
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
    conn.close().await.ok();
}

/// A write transaction left open on the database holds the feed's horizon back: the other
/// replica's lag grows past `feed.max_lag_secs` and its `/readyz` turns 503 `not_ready` (searches
/// still answer, with `index_lag_ms` saying how stale they are); once the transaction ends, the
/// write is applied and the replica is ready again.
#[tokio::test]
async fn a_replica_held_behind_the_feed_is_not_ready_until_it_catches_up() {
    let test = "a_replica_held_behind_the_feed_is_not_ready_until_it_catches_up";
    let Some(url) = fresh_database(test).await else {
        return;
    };
    let images = tempfile::tempdir().unwrap();
    let a = replica(&url, images.path(), "a").await;
    let b = replica_with(&url, images.path(), "b", |c| c.feed.max_lag_secs = 1).await;
    let photos = fixture_photos(1);
    b.readyz().await.assert_status(200);

    // An open transaction with a transaction id, older than the write below.
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut holder = options.connect().await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder.execute("SELECT pg_current_xact_id()").await.unwrap();
    a.create_product(
        "acme",
        &json!({"id": "late", "title": "late", "tags": ["run:late"]}),
        &photos,
    )
    .await
    .assert_status(201);

    let started = Instant::now();
    loop {
        let r = b.readyz().await;
        if r.status == 503 {
            assert_eq!(r.json["error"]["code"], "not_ready", "{}", r.json);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "B stayed ready while held behind the feed: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = b
        .search(&photos[0], "k=5&filter=run:late")
        .await
        .assert_status(200);
    assert!(
        r.json["index_lag_ms"].as_i64().unwrap() > 1000,
        "{}",
        r.json
    );
    assert_eq!(r.json["results"], json!([]), "not applied yet");

    holder.execute("ROLLBACK").await.unwrap();
    holder.close().await.ok();
    until_found(&b, &photos[0], "run:late", &["late"]).await;
    let started = Instant::now();
    while b.readyz().await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "B never ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
    drop_database(&url).await;
}
