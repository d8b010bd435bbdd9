//! The worker against real Postgres, RabbitMQ and Docker (test builder image
//! `lookit-test/builder`, see tests/images/builder).

mod common;

use std::time::Duration;

use common::{
    assert_no_builder_container, connect, dead_letters, fixture, next_delivery,
    participant_message, ready, start_worker, text_header, wait_until,
};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use lookit_contracts::Queue;
use lookit_worker::WorkerEvent;

#[tokio::test]
async fn a_build_request_ends_in_a_served_index_html_and_one_notice() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let mut events = worker.events.subscribe();
    let (_connection, publisher) = f.publisher().await;
    let player = f.player("player", &[]);

    let build_id = f.request_build(&publisher, &player).await;
    assert_eq!(f.finished_build(build_id).await, "succeeded");

    let (location, log, cache_hit): (String, String, bool) =
        sqlx::query_as("SELECT output_location, log, cache_hit FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert!(location.ends_with(&f.study_id.to_string()), "{location}");
    let index =
        std::fs::read_to_string(std::path::Path::new(&location).join("index.html")).unwrap();
    assert!(
        index.contains(&format!("/studies/{}/assets/frameplayer.js", f.study_id)),
        "{index}"
    );
    assert!(std::path::Path::new(&location)
        .join("assets/frameplayer.js")
        .is_file());
    assert!(
        log.contains("build finished"),
        "the builder's output is in the log: {log}"
    );
    assert!(!cache_hit);
    // The dashboard saw the builder's lines live.
    let mut saw_line = false;
    while let Ok(event) = events.try_recv() {
        if let WorkerEvent::BuildLog { line, .. } = event {
            saw_line |= line.contains("build finished");
        }
    }
    assert!(saw_line, "no live log line reached the subscribers");

    let (to, status): (Vec<String>, String) = wait_until("the notice is kept", Duration::from_secs(30), || async {
        sqlx::query_as::<_, (Vec<String>, String)>(
            "SELECT to_addresses, status FROM emails WHERE build_id = $1 AND template = 'build_succeeded'",
        )
        .bind(build_id)
        .fetch_optional(&f.pool)
        .await
        .unwrap()
        .filter(|(_, status)| status == "kept")
    })
    .await;
    assert_eq!((to, status.as_str()), (vec![f.admin_email.clone()], "kept"));
    assert_eq!(f.study_log_entries(Some("deployed")).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_failing_builder_fails_the_build_with_its_stage_log_and_exactly_one_email() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let (_connection, publisher) = f.publisher().await;
    let player = f.player(
        "broken",
        &[("FAIL_BUILD", "Cannot find module 'ember-cli-babel'")],
    );

    let build_id = f.request_build(&publisher, &player).await;
    // What `lookit-local build --wait` shows: the log as it grows, then the end.
    let mut followed = Vec::new();
    let outcome =
        lookit_worker::follow_build(&f.pool, build_id, |line| followed.push(line.to_string()))
            .await
            .unwrap();
    assert_eq!(outcome.status, lookit_contracts::BuildStatus::Failed);
    assert_eq!(outcome.stage.as_deref(), Some("build"));
    assert!(
        followed.iter().any(|l| l.contains("Cannot find module")),
        "{followed:?}"
    );
    let (stage, error, log): (String, String, String) =
        sqlx::query_as("SELECT stage, error, log FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(stage, "build");
    assert!(error.contains("exited with code 1"), "{error}");
    assert!(
        log.contains("Cannot find module 'ember-cli-babel'"),
        "{log}"
    );

    let body: String = wait_until(
        "the failure notice is kept",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT body_text FROM emails WHERE build_id = $1 AND status = 'kept'",
            )
            .bind(build_id)
            .fetch_optional(&f.pool)
            .await
            .unwrap()
            .flatten()
        },
    )
    .await;
    assert!(
        body.contains("\"build\"") && body.contains("ember-cli-babel"),
        "{body}"
    );
    assert_eq!(f.emails_of(build_id).await, 1);
    assert_eq!(f.study_log_entries(Some("failed to build")).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_second_build_with_the_same_key_is_a_cache_hit() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let (_connection, publisher) = f.publisher().await;
    let player = f.player("player", &[]);

    let first = f.request_build(&publisher, &player).await;
    assert_eq!(f.finished_build(first).await, "succeeded");
    let second = f.request_build(&publisher, &player).await;
    assert_eq!(f.finished_build(second).await, "succeeded");

    let rows: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT cache_key, cache_hit, log FROM builds WHERE id = ANY($1) ORDER BY created_at",
    )
    .bind(vec![first, second])
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(
        rows[0].0, rows[1].0,
        "same commit, image and environment: same key"
    );
    assert!(
        !rows[0].1 && rows[1].1,
        "only the second build is a cache hit"
    );
    assert!(
        !rows[1].2.contains("build finished"),
        "the builder did not run again: {}",
        rows[1].2
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_unparsable_message_lands_in_the_dead_letter_queue_with_its_reason() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let connection = connect(&f.vhost).await;
    let mut dead = dead_letters(&connection, Queue::Builds).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "",
            "builds",
            BasicPublishOptions::default(),
            b"{\"build\": 42}",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    let message = next_delivery(
        &mut dead,
        Duration::from_secs(30),
        "a dead-lettered message",
    )
    .await;
    assert_eq!(message.data, b"{\"build\": 42}");
    let reason = text_header(&message, "x-lookit-reason");
    assert!(reason.starts_with("unparsable message"), "{reason}");
    worker.stop().await;
}

#[tokio::test]
async fn an_email_that_cannot_be_rendered_is_failed_and_dead_lettered_once() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let (connection, publisher) = f.publisher().await;
    let mut dead = dead_letters(&connection, Queue::Email).await;

    let email_id = f
        .queue_email(&publisher, "no_such_template", serde_json::json!({}))
        .await;
    let message = next_delivery(
        &mut dead,
        Duration::from_secs(30),
        "a dead-lettered message",
    )
    .await;
    let last_error = text_header(&message, "x-lookit-last-error");
    assert!(
        last_error.contains("unknown email template"),
        "{last_error}"
    );
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM emails WHERE id = $1")
            .bind(email_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("no_such_template"));
    worker.stop().await;
}

/// A real SMTP server on loopback: aiosmtpd (PyPI), printing what it receives.
struct SmtpServer {
    port: u16,
    child: tokio::process::Child,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // scripts/test installs aiosmtpd in its own venv as lookit-test-python.
        let python = which("lookit-test-python").unwrap_or_else(|| "python3".into());
        let child = tokio::process::Command::new(python)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd (pip install aiosmtpd)");
        wait_until("aiosmtpd listens", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        SmtpServer { port, child }
    }

    /// Reads what the server printed until `needle` appears.
    async fn received(&mut self, needle: &str) -> String {
        use tokio::io::AsyncReadExt;
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut seen = String::new();
        let mut buffer = [0u8; 4096];
        let read = async {
            while !seen.contains(needle) {
                let n = stdout.read(&mut buffer).await.unwrap();
                assert!(n > 0, "aiosmtpd ended; it printed: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the message reaches the SMTP server");
        seen
    }
}

/// The raw message aiosmtpd printed (between its markers, without the lines it adds).
fn printed_message(printed: &str) -> String {
    let start = printed
        .find("---------- MESSAGE FOLLOWS ----------")
        .expect("a message was printed");
    let end = printed
        .find("------------ END MESSAGE ------------")
        .expect("the whole message");
    printed[start..end]
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with("mail options:") && !line.starts_with("X-Peer:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

#[tokio::test]
async fn email_reaches_a_real_smtp_server_and_the_outbox() {
    let f = fixture().await;
    let mut smtp = SmtpServer::start().await;
    let mut settings = f.settings();
    settings.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port).into());
    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;

    let email_id = f
        .queue_email(&publisher, "participant_message", participant_message())
        .await;
    let printed = smtp.received("Your child's session is complete.").await;
    assert!(
        printed.contains("Subject: Thank you for taking part"),
        "{printed}"
    );
    assert!(
        printed
            .contains("List-Unsubscribe: <https://lookit.localhost/account/email/unsubscribe/abc>"),
        "{printed}"
    );
    assert!(printed.contains(&f.admin_email), "{printed}");

    let status = f
        .row_for(
            "the outbox says sent",
            "SELECT status FROM emails WHERE id = $1 AND sent_at IS NOT NULL",
            email_id,
        )
        .await;
    assert_eq!(status, "sent");
    worker.stop().await;
}

#[tokio::test]
async fn sent_email_shows_the_logo_from_an_inline_part_its_html_references_by_content_id() {
    use mailparse::MailHeaderMap;
    let f = fixture().await;
    let mut smtp = SmtpServer::start().await;
    let mut settings = f.settings();
    settings.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port).into());
    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;

    f.queue_email(
        &publisher,
        "study_state_changed",
        serde_json::json!({
            "study_name": "Peekaboo", "study_id": f.study_id, "previous_state": "submitted",
            "state": "approved", "changed_by": "", "comments": "",
        }),
    )
    .await;
    let printed = smtp.received("END MESSAGE").await;
    let raw = printed_message(&printed);
    let mail = mailparse::parse_mail(raw.as_bytes()).unwrap_or_else(|e| panic!("{e}: {raw}"));

    assert_eq!(mail.ctype.mimetype, "multipart/alternative", "{raw}");
    assert_eq!(mail.subparts[0].ctype.mimetype, "text/plain");
    let related = &mail.subparts[1];
    assert_eq!(related.ctype.mimetype, "multipart/related", "{raw}");
    let html = related.subparts[0].get_body().unwrap();
    assert_eq!(related.subparts[0].ctype.mimetype, "text/html");
    assert!(html.contains("Peekaboo"), "{html}");
    let cid = html
        .split("src=\"cid:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the HTML shows no cid: image: {html}"));

    let image = related
        .subparts
        .iter()
        .find(|part| {
            part.headers.get_first_value("Content-ID").as_deref() == Some(&format!("<{cid}>"))
        })
        .unwrap_or_else(|| panic!("no part has the Content-ID <{cid}>: {raw}"));
    assert_eq!(image.ctype.mimetype, "image/png");
    assert!(
        image
            .headers
            .get_first_value("Content-Disposition")
            .is_some_and(|d| d.starts_with("inline")),
        "{raw}"
    );
    let png = image.get_body_raw().unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "the inline part is the PNG logo"
    );
    worker.stop().await;
}

/// The next event `wanted` picks, within `limit`.
async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<WorkerEvent>,
    what: &str,
    limit: Duration,
    mut wanted: impl FnMut(&WorkerEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(value) = wanted(&event) {
                        return value;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => panic!("the worker's events ended: {error}"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

/// A queue of the test vhost as the broker's management API shows it, with the
/// `message_stats` counters it refreshes every few seconds.
async fn queue_stats(vhost: &lookit_testkit::TestVhost, queue: &str) -> serde_json::Value {
    vhost
        .management_get(&format!("queues/{}/{queue}", vhost.name()))
        .await
}

/// One of a queue's counters; absent until it first counts.
fn counted(stats: &serde_json::Value, counter: &str) -> u64 {
    stats["message_stats"][counter].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_running_build_cancelled_by_the_user_stops_publishes_nothing_and_the_worker_goes_on() {
    use lookit_contracts::BuildStatus;
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let mut events = worker.events.subscribe();
    let (connection, publisher) = f.publisher().await;
    let status_of = |wanted: uuid::Uuid| {
        move |event: &WorkerEvent| match event {
            WorkerEvent::BuildStatus {
                build_id, status, ..
            } if *build_id == wanted && status.is_finished() => Some(*status),
            _ => None,
        }
    };

    // A published version, which the cancelled build must leave as it is.
    let first = f.request_build(&publisher, &f.player("first", &[])).await;
    assert_eq!(f.finished_build(first).await, "succeeded");
    let location: String = sqlx::query_scalar("SELECT output_location FROM builds WHERE id = $1")
        .bind(first)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    let index = std::path::Path::new(&location).join("index.html");
    let published = std::fs::read_to_string(&index).unwrap();

    // The test builder waits for a file nobody writes: this build runs until it is stopped.
    let slow = f
        .request_build(
            &publisher,
            &f.player("slow", &[("WAIT_FOR_FILE", "release")]),
        )
        .await;
    next_event(
        &mut events,
        "the slow build's builder runs",
        Duration::from_secs(120),
        |event| match event {
            WorkerEvent::BuildLog { build_id, line } if *build_id == slow => {
                line.contains("waiting for").then_some(())
            }
            _ => None,
        },
    )
    .await;

    lookit_worker::cancel_build(&f.pool, slow).await.unwrap();
    // The study may be built again at once; the worker gets to it once the slow one is stopped.
    let next = f.request_build(&publisher, &f.player("next", &[])).await;
    let ended = next_event(
        &mut events,
        "the worker reports the build cancelled",
        Duration::from_secs(60),
        status_of(slow),
    )
    .await;
    assert_eq!(ended, BuildStatus::Cancelled);

    let (status, error, log, location, attempts): (String, String, String, Option<String>, i32) =
        sqlx::query_as(
            "SELECT status, error, log, output_location, attempts FROM builds WHERE id = $1",
        )
        .bind(slow)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), error.as_str()),
        ("cancelled", "cancelled by the user")
    );
    assert!(log.contains("waiting for"), "{log}");
    assert!(
        log.trim_end()
            .ends_with("the study's published version is unchanged"),
        "the log ends saying what became of the build: {log}"
    );
    assert_eq!(location, None);
    assert_eq!(attempts, 1, "a cancelled build is not tried again");
    assert_no_builder_container(slow).await;
    // Nothing published, nothing announced.
    assert_eq!(std::fs::read_to_string(&index).unwrap(), published);
    assert_eq!(f.emails_of(slow).await, 0);
    assert_eq!(
        f.study_log_entries(None).await,
        1,
        "only the first build's `deployed` entry"
    );
    // A second cancel is refused, naming the state.
    let again = lookit_worker::cancel_build(&f.pool, slow)
        .await
        .unwrap_err();
    assert!(
        again
            .to_string()
            .starts_with("the build is already cancelled"),
        "{again}"
    );

    // The same worker goes on with the next build, which publishes.
    let ended = next_event(
        &mut events,
        "the next build ends",
        Duration::from_secs(120),
        status_of(next),
    )
    .await;
    assert_eq!(ended, BuildStatus::Succeeded);
    assert_ne!(std::fs::read_to_string(&index).unwrap(), published);

    worker.stop().await;

    // Each of the three jobs was acknowledged once: the cancelled one was not put back,
    // redelivered, retried or dead-lettered.
    let builds = wait_until(
        "the broker counts three acknowledgements",
        Duration::from_secs(30),
        || async {
            let stats = queue_stats(&f.vhost, "builds").await;
            (counted(&stats, "ack") >= 3).then_some(stats)
        },
    )
    .await;
    assert_eq!(counted(&builds, "ack"), 3, "{builds}");
    assert_eq!(counted(&builds, "redeliver"), 0, "{builds}");
    let retry = queue_stats(&f.vhost, "builds.retry").await;
    assert_eq!(counted(&retry, "publish"), 0, "{retry}");
    // With the worker stopped, a message it held would be ready again.
    let channel = connection.create_channel().await.unwrap();
    for queue in ["builds", "builds.retry", "builds.dead"] {
        assert_eq!(ready(&channel, queue).await, 0, "messages in {queue}");
    }
}
