//! The fixtures really isolate tests: two fresh databases do not share tables, and a fresh vhost
//! exists on the broker until it is dropped.

#[tokio::test]
async fn fresh_databases_are_isolated_and_writable() {
    let a = lookit_testkit::fresh_database().await;
    let b = lookit_testkit::fresh_database().await;
    assert_ne!(a.name(), b.name());
    let pool_a = a.pool().await;
    sqlx::query("CREATE TABLE marker (id int)")
        .execute(&pool_a)
        .await
        .unwrap();
    let pool_b = b.pool().await;
    let seen: Option<String> = sqlx::query_scalar("SELECT to_regclass('marker')::text")
        .fetch_one(&pool_b)
        .await
        .unwrap();
    assert_eq!(
        seen, None,
        "a table of one test leaked into another test's database"
    );
}

#[tokio::test]
async fn fresh_vhost_exists_until_dropped() {
    let vhost = lookit_testkit::fresh_vhost().await;
    let url = vhost.management_url().clone();
    let endpoint = format!(
        "http://{}:{}/api/vhosts/{}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        vhost.name()
    );
    let get = || {
        reqwest::Client::new()
            .get(&endpoint)
            .basic_auth(url.username(), url.password())
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    assert!(vhost.amqp_url().ends_with(vhost.name()));
    drop(vhost);
    assert_eq!(get().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_s3_server_keeps_buckets_apart() {
    let server = lookit_testkit::s3_server().await;
    let a = server.fresh_bucket().await;
    let b = server.fresh_bucket().await;
    assert_ne!(a, b);
    // Started once per test binary: a second call gives the same server.
    assert_eq!(
        lookit_testkit::s3_server().await.endpoint(),
        server.endpoint()
    );
    let listing = reqwest::get(format!("{}/{a}", server.endpoint()))
        .await
        .unwrap();
    assert!(listing.status().is_success(), "{}", listing.status());
    let body = listing.text().await.unwrap();
    assert!(body.contains(&a) && !body.contains("<Key>"), "{body}");
}
