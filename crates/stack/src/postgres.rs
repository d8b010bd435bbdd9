//! Postgres readiness and provisioning, the same on every backend: connect as the configured
//! role, make sure it authenticates with scram-sha-256, owns the Lookit database, and that no
//! `trust` rule lets anyone in without a password.

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::connections::PostgresConnection;
use crate::event::{Reporter, StepOutcome};

/// Opens a connection as the provisioned role. Statement logging is off: provisioning sends a
/// password inside an `ALTER ROLE` statement.
pub(crate) async fn connect(
    conn: &PostgresConnection,
    database: &str,
) -> anyhow::Result<PgConnection> {
    let options: sqlx::postgres::PgConnectOptions = conn
        .url_for_database(database)
        .expose_secret()
        .parse()
        .context("the Postgres connection settings do not form a valid URL")?;
    options
        .disable_statement_logging()
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot log in to {} as {} (database {database})",
                conn.address(),
                conn.user
            )
        })
}

/// A real login handshake, used as the readiness probe.
pub(crate) async fn probe(conn: &PostgresConnection) -> anyhow::Result<()> {
    connect(conn, "postgres").await?.close().await?;
    Ok(())
}

/// Idempotent provisioning; each step is reported with its outcome.
pub(crate) async fn provision(
    conn: &PostgresConnection,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let mut db = connect(conn, "postgres").await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut db)
            .await
            .context("cannot read the role's attributes")?;

    if superuser {
        let scram: bool = sqlx::query_scalar(
            "SELECT coalesce(rolpassword LIKE 'SCRAM-SHA-256$%', false) FROM pg_authid WHERE rolname = current_user",
        )
        .fetch_one(&mut db)
        .await?;
        if scram {
            reporter.step(
                "role password",
                StepOutcome::Unchanged,
                format!("role {} logs in with a scram-sha-256 password", conn.user),
            );
        } else {
            sqlx::query("SET password_encryption = 'scram-sha-256'")
                .execute(&mut db)
                .await?;
            // ALTER ROLE takes no bind parameters; the literal is quoted by doubling quotes.
            let literal = conn.password.expose_secret().replace('\'', "''");
            let statement = format!("ALTER ROLE CURRENT_USER PASSWORD '{literal}'");
            sqlx::query(&statement)
                .persistent(false)
                .execute(&mut db)
                .await
                .context("cannot set the role's password")?;
            reporter.step(
                "role password",
                StepOutcome::Done,
                format!("password of role {} stored as scram-sha-256", conn.user),
            );
        }
    } else {
        reporter.step(
            "role password",
            StepOutcome::Skipped,
            format!(
                "role {} is no superuser: its password storage cannot be checked",
                conn.user
            ),
        );
    }

    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_catalog.pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(&conn.database)
    .fetch_optional(&mut db)
    .await?;
    let database = quote_identifier(&conn.database);
    let user = quote_identifier(&conn.user);
    match owner {
        None => {
            let statement = format!("CREATE DATABASE {database} OWNER {user}");
            sqlx::query(&statement)
                .execute(&mut db)
                .await
                .with_context(|| format!("cannot create the database {}", conn.database))?;
            reporter.step(
                "database",
                StepOutcome::Done,
                format!("database {} created, owned by {}", conn.database, conn.user),
            );
        }
        Some(owner) if owner == conn.user => reporter.step(
            "database",
            StepOutcome::Unchanged,
            format!("database {} exists, owned by {}", conn.database, conn.user),
        ),
        Some(owner) => {
            let statement = format!("ALTER DATABASE {database} OWNER TO {user}");
            sqlx::query(&statement)
                .execute(&mut db)
                .await
                .with_context(|| {
                    format!(
                        "the database {} is owned by {owner} and cannot be given to {}",
                        conn.database, conn.user
                    )
                })?;
            reporter.step(
                "database",
                StepOutcome::Done,
                format!(
                    "database {} handed from {owner} to {}",
                    conn.database, conn.user
                ),
            );
        }
    }

    if superuser {
        let trusting: Vec<String> = sqlx::query_scalar(
            "SELECT 'line ' || line_number::text FROM pg_hba_file_rules WHERE auth_method = 'trust'",
        )
        .fetch_all(&mut db)
        .await?;
        if trusting.is_empty() {
            reporter.step(
                "authentication",
                StepOutcome::Unchanged,
                "no `trust` rule: every connection needs a password".to_string(),
            );
        } else {
            let detail = format!(
                "pg_hba.conf lets connections in without a password at {}",
                trusting.join(", ")
            );
            reporter.step("authentication", StepOutcome::Failed, detail.clone());
            anyhow::bail!(detail);
        }
    } else {
        reporter.step(
            "authentication",
            StepOutcome::Skipped,
            "pg_hba.conf can only be read by a superuser".to_string(),
        );
    }
    db.close().await?;

    connect(conn, &conn.database).await?.close().await?;
    reporter.step(
        "login",
        StepOutcome::Unchanged,
        format!(
            "{} logs in to {} at {}",
            conn.user,
            conn.database,
            conn.address()
        ),
    );
    Ok(())
}

/// Quotes an SQL identifier (`"` doubled), for statements that take no bind parameters.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
