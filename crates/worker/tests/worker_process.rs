//! The worker as a separate process (the `lookit-worker` binary), killed in the middle of a build.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_no_builder_container, fixture, wait_until, Fixture, BUILDER_IMAGE};

fn spawn_worker(f: &Fixture) -> tokio::process::Child {
    spawn_worker_with(f, &[])
}

fn spawn_worker_with(f: &Fixture, extra_env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lookit-worker"))
        .envs(extra_env.iter().copied())
        .env("LOOKIT_WORKER_DATABASE_URL", f.db.url())
        .env("LOOKIT_WORKER_AMQP_URL", f.vhost.amqp_url())
        .env("LOOKIT_WORKER_BUILDER_IMAGE", BUILDER_IMAGE)
        .env("LOOKIT_WORKER_BUILDS_DIR", f.builds_dir())
        .kill_on_drop(true)
        .spawn()
        .expect("start lookit-worker")
}

#[tokio::test]
async fn killing_the_worker_mid_build_leads_to_exactly_one_completed_build() {
    let f = fixture().await;
    let (_connection, publisher) = f.publisher().await;
    // The test builder waits for `release` to appear in its checkout: the build is surely
    // running when the worker is killed.
    let player = f.player("player", &[("WAIT_FOR_FILE", "release")]);
    let build_id = f.request_build(&publisher, &player).await;

    let mut first = spawn_worker(&f);
    f.builder_waiting(
        "the first attempt is building",
        Duration::from_secs(60),
        build_id,
        1..=1,
    )
    .await;
    first.kill().await.unwrap();

    let mut second = spawn_worker(&f);
    let sha = f
        .builder_waiting(
            "the redelivered job builds again",
            Duration::from_secs(60),
            build_id,
            2..=2,
        )
        .await;
    f.release_builder(&sha);
    assert_eq!(f.finished_build(build_id).await, "succeeded");

    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM builds WHERE study_id = $1 AND status = 'succeeded'",
    )
    .bind(f.study_id)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(succeeded, 1);
    assert_eq!(f.study_log_entries(Some("deployed")).await, 1);
    assert_eq!(f.emails_of(build_id).await, 1);
    // The killed worker's container was replaced, not left running.
    assert_no_builder_container(build_id).await;
    second.kill().await.unwrap();
}

/// An SMTP server on loopback that holds every message at its final `DATA` reply until the test
/// opens the gate: messages it has not answered are not delivered, so a worker killed while they
/// wait has sent nothing. Records the subject of each message it accepted.
struct GatedSmtp {
    port: u16,
    accepted: Arc<Mutex<Vec<String>>>,
    waiting: Arc<AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl GatedSmtp {
    async fn start() -> GatedSmtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (gate, opened) = tokio::sync::watch::channel(false);
        let (accepted_, waiting_) = (accepted.clone(), waiting.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(smtp_session(
                    stream,
                    accepted_.clone(),
                    waiting_.clone(),
                    opened.clone(),
                ));
            }
        });
        GatedSmtp {
            port,
            accepted,
            waiting,
            gate,
        }
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }
}

/// One SMTP conversation, enough of RFC 5321 for lettre: every command is accepted, a message
/// ends at the lone `.` line and is answered (and recorded) only once the gate is open.
async fn smtp_session(
    stream: tokio::net::TcpStream,
    accepted: Arc<Mutex<Vec<String>>>,
    waiting: Arc<AtomicUsize>,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 gated ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let command = line.to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("DATA") {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut subject = String::new();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line == "." => break,
                    Ok(Some(line)) => {
                        if let Some(value) = line.strip_prefix("Subject: ") {
                            subject = value.to_string();
                        }
                    }
                    // The client went away mid-message: nothing was delivered.
                    _ => return,
                }
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            // A client that goes away while waiting (killed) ends the conversation undelivered,
            // as at a real server: the client sends nothing until it has the reply. Biased, the
            // hang-up is looked at first: a client killed before the gate opens must never count
            // as delivered just because both branches were ready when this task next ran.
            let opened = tokio::select! {
                biased;
                _ = lines.next_line() => false,
                opened = gate.wait_for(|open| *open) => opened.is_ok(),
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            if !opened {
                return;
            }
            if write.write_all(b"250 accepted\r\n").await.is_ok() {
                accepted.lock().unwrap().push(subject);
            }
            continue;
        } else if command.starts_with("QUIT") {
            b"221 bye\r\n"
        } else if command.starts_with("EHLO") {
            b"250 gated\r\n"
        } else {
            b"250 ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn killing_the_worker_with_twenty_emails_in_flight_sends_each_exactly_once() {
    let f = fixture().await;
    let smtp = GatedSmtp::start().await;
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let (_connection, publisher) = f.publisher().await;
    let mut emails = Vec::new();
    for n in 0..20 {
        let context = serde_json::json!({
            "study_name": format!("Study {n}"), "study_id": "s", "previous_state": "active",
            "state": "paused", "changed_by": "", "comments": "",
        });
        emails.push(
            f.queue_email(&publisher, "study_state_changed", context)
                .await,
        );
    }

    let mut first = spawn_worker_with(&f, &[("LOOKIT_WORKER_SMTP_URL", &smtp_url)]);
    // Every sending slot is busy in an SMTP conversation, the rest are prefetched and unacked.
    wait_until(
        "the worker has emails at the SMTP server",
        Duration::from_secs(60),
        || async { (smtp.waiting.load(Ordering::SeqCst) >= 8).then_some(()) },
    )
    .await;
    first.kill().await.unwrap();
    let _ = first.wait().await;
    // The server has seen every killed conversation hang up before it starts accepting.
    wait_until(
        "the SMTP server has seen the killed worker hang up",
        Duration::from_secs(30),
        || async { (smtp.waiting.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
    assert!(
        smtp.accepted().is_empty(),
        "nothing was sent before the kill"
    );

    smtp.gate.send_replace(true);
    let mut second = spawn_worker_with(&f, &[("LOOKIT_WORKER_SMTP_URL", &smtp_url)]);
    wait_until("every email is sent", Duration::from_secs(120), || async {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'sent'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
        (sent == 20).then_some(())
    })
    .await;
    let mut subjects = smtp.accepted();
    subjects.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|n| format!("Study \"Study {n}\" is now paused"))
        .collect();
    expected.sort();
    assert_eq!(
        subjects, expected,
        "each email reached the SMTP server exactly once"
    );
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_jobs WHERE queue = 'email'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(processed, 20, "each job is recorded done once");
    second.kill().await.unwrap();
}

#[tokio::test]
async fn a_cancel_reaches_a_build_running_in_a_separate_worker_process() {
    let f = fixture().await;
    let (_connection, publisher) = f.publisher().await;
    let mut worker = spawn_worker(&f);
    // The test builder waits for a file nobody writes: the build runs until it is stopped.
    let player = f.player("slow", &[("WAIT_FOR_FILE", "release")]);
    let build_id = f.request_build(&publisher, &player).await;
    let log_of = || async {
        sqlx::query_scalar::<_, String>("SELECT log FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(&f.pool)
            .await
            .unwrap()
    };
    wait_until("the builder runs", Duration::from_secs(60), || async {
        log_of().await.contains("waiting for").then_some(())
    })
    .await;

    // Only the database connects this process and the worker.
    lookit_worker::cancel_build(&f.pool, build_id)
        .await
        .unwrap();
    let log = wait_until(
        "the worker process stops the build",
        Duration::from_secs(60),
        || async {
            let log = log_of().await;
            log.contains("cancelled by the user").then_some(log)
        },
    )
    .await;
    assert!(log.contains("published version is unchanged"), "{log}");
    assert_eq!(f.build_status(build_id).await, "cancelled");
    assert_no_builder_container(build_id).await;

    // The process goes on with the next build.
    let next = f.request_build(&publisher, &f.player("next", &[])).await;
    assert_eq!(f.finished_build(next).await, "succeeded");
    worker.kill().await.unwrap();
}
