//! A database that refuses connections for lack of them (SQLSTATE 53300, too_many_connections)
//! is a 503 that says so, never a 500. Real refusals of the test Postgres: a role it allows no
//! connection (`CONNECTION LIMIT 0`), as when every connection is taken. Directly (a connection
//! of its own, as the preview reload listener opens) the error is Postgres's; through a pool
//! sqlx retries it until the pool's bounded wait ends, as the API's requests see it.

use std::time::Duration;

use axum::response::IntoResponse as _;
use lookit_api::ApiError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection as _;

/// A login role of the test Postgres allowed no connection, dropped when the value is (even when
/// the test fails: roles outlive the test's database).
struct RoleWithoutConnections {
    admin_url: String,
    name: String,
    options: PgConnectOptions,
}

impl RoleWithoutConnections {
    async fn create() -> RoleWithoutConnections {
        lookit_testkit::install_crypto_provider();
        let admin_url = std::env::var("LOOKIT_TEST_DATABASE_URL").expect(
            "LOOKIT_TEST_DATABASE_URL is set: run `eval \"$(scripts/test-services start)\"` first",
        );
        let name = format!("test_no_connections_{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!(
            "CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' CONNECTION LIMIT 0"
        ))
        .execute(&mut admin)
        .await
        .expect("create a role without connections");
        let options = admin_url
            .parse::<PgConnectOptions>()
            .expect("LOOKIT_TEST_DATABASE_URL is a Postgres URL")
            .username(&name)
            .password(&password);
        RoleWithoutConnections {
            admin_url,
            name,
            options,
        }
    }
}

impl Drop for RoleWithoutConnections {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        lookit_testkit::on_own_thread(async move {
            if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{name}\""))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}

/// The status and the error's detail of the API's answer to `error`.
async fn answer_to(error: sqlx::Error) -> (u16, String) {
    let response = ApiError::from(error).into_response();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let detail = document["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    (status, detail)
}

#[tokio::test]
async fn a_database_without_a_connection_to_spare_is_a_503_saying_so() {
    let role = RoleWithoutConnections::create().await;

    let refused = sqlx::PgConnection::connect_with(&role.options)
        .await
        .expect_err("the role may not connect");
    let (status, detail) = answer_to(refused).await;
    assert_eq!(status, 503, "{detail}");
    assert!(
        detail.contains("too many connections") && detail.contains("try again"),
        "the answer says why and what to do: {detail}"
    );

    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(role.options.clone());
    let waited = pool.acquire().await.expect_err("the role may not connect");
    let (status, detail) = answer_to(waited).await;
    assert_eq!(status, 503, "{detail}");
    assert!(
        detail.contains("connections taken") && detail.contains("try again"),
        "the answer says why and what to do: {detail}"
    );
}
