//! A tablespace of the shared test Postgres on a [`SmallDisk`], for the tests of a database whose
//! disk fills up (issue #9). The tables a test moves there live on a disk the test fills, so a
//! statement that needs a new block of them fails as on a full database disk (SQLSTATE 53100,
//! `disk_full`), while the server's catalogs, its WAL and every other test's database stay on
//! their own disk: the shared server keeps serving the other suites.

use std::os::unix::fs::MetadataExt as _;
use std::sync::Mutex;

use sqlx::{Connection, PgPool};

use crate::SmallDisk;

/// A tablespace on a small disk, for one test. Dropping it (even when the test fails) drops the
/// databases whose tables moved there, then the tablespace, then unmounts the disk: the shared
/// server is never left with a tablespace on a vanished disk.
pub struct SmallTablespace {
    name: String,
    admin_url: String,
    /// The databases of the tables moved here: Postgres drops no tablespace that holds anything.
    databases: Mutex<Vec<String>>,
    /// Declared last: unmounted after the tablespace is gone.
    disk: SmallDisk,
}

impl SmallTablespace {
    /// Mounts a small disk and makes it a tablespace of the test Postgres. `None`, with the
    /// reason on stderr, where no disk can be mounted (see [`SmallDisk::mount`]): the caller
    /// returns, skipping.
    pub async fn create() -> Option<SmallTablespace> {
        let disk = SmallDisk::mount()?;
        let admin_url = crate::required_env("LOOKIT_TEST_DATABASE_URL");
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test Postgres (is scripts/test-services running?)");
        // Postgres writes its tablespace files as the user it runs as: its data folder's owner.
        let data: String = sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&mut admin)
            .await
            .expect("ask the test Postgres for its data folder");
        let server = std::fs::metadata(&data).unwrap_or_else(|error| {
            panic!("the test Postgres runs on this machine, its data in {data}: {error}")
        });
        let folder = disk.folder_owned_by("postgres", (server.uid(), server.gid()));
        let name = format!("test_small_{}", uuid::Uuid::new_v4().simple());
        let location = folder.to_str().expect("a temporary folder's path is UTF-8");
        sqlx::query(&format!(
            "CREATE TABLESPACE \"{name}\" LOCATION '{location}'"
        ))
        .execute(&mut admin)
        .await
        .expect("create a tablespace on the small disk");
        Some(SmallTablespace {
            name,
            admin_url,
            databases: Mutex::new(Vec::new()),
            disk,
        })
    }

    /// The disk under the tablespace, to fill and free.
    pub fn disk(&self) -> &SmallDisk {
        &self.disk
    }

    /// Moves `table` of the database `pool` connects to onto the small disk (its TOAST table
    /// with it, its indexes not). That database is dropped when the tablespace is.
    pub async fn take_table(&self, pool: &PgPool, table: &str) {
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(pool)
            .await
            .expect("the test database's name");
        self.databases.lock().unwrap().push(database);
        sqlx::query(&format!(
            "ALTER TABLE \"{table}\" SET TABLESPACE \"{}\"",
            self.name
        ))
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("move {table} onto the small disk: {error}"));
    }
}

impl Drop for SmallTablespace {
    fn drop(&mut self) {
        let databases =
            std::mem::take(&mut *self.databases.lock().unwrap_or_else(|e| e.into_inner()));
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = crate::on_own_thread(async move {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            for database in databases {
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                ))
                .execute(&mut admin)
                .await?;
            }
            sqlx::query(&format!("DROP TABLESPACE IF EXISTS \"{name}\""))
                .execute(&mut admin)
                .await
                .map(drop)
        });
        if let Some(Err(error)) = dropped {
            eprintln!(
                "could not drop the test tablespace {}: {error}; the test Postgres keeps it on a \
                 disk that is going away: drop it there (DROP TABLESPACE \"{}\")",
                self.name, self.name
            );
        }
    }
}
