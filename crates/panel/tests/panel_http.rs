//! The panel's HTTP API driven over real TCP, against an in-test instance (`TestInstance`, our
//! own `ControlPlane` with a few services whose state changes when asked).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lookit_panel::{
    ActionError, ControlPlane, EmailHeader, EmailMessage, EmailSummary, HopOutcome,
    NotificationLevel, PanelEvent, PanelState, ServiceAction, ServiceName, StackAction,
    StoredState, TunnelCheck, TunnelHop, VideoContent, VideoFile, VideoSummary,
};
use lookit_status::{ServiceState, ServiceStatus, StatusReport};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

const TOKEN: &str = "test-token-0123456789";

/// A pretend instance: services change state when asked and every change is broadcast.
struct TestInstance {
    report: Mutex<StatusReport>,
    events: broadcast::Sender<PanelEvent>,
    shutdown_requested: Mutex<Option<oneshot::Sender<()>>>,
    /// What the tunnel check answers; the tunnel starts closed.
    tunnel_check: Mutex<Result<TunnelCheck, ActionError>>,
    /// One kept email and one received video (its file is [`VIDEO`]), for the outbox and
    /// videos pages.
    email: EmailMessage,
    video: VideoSummary,
}

impl TestInstance {
    fn new(shutdown: oneshot::Sender<()>) -> Self {
        let service = |name: &str| ServiceStatus {
            name: name.into(),
            state: ServiceState::Ready,
            backend: "native".into(),
            address: Some("127.0.0.1:1".into()),
            started_at: None,
            restarts: 0,
            cpu_percent: None,
            memory_bytes: None,
            message: None,
        };
        let report = StatusReport {
            ready: true,
            running: true,
            services: vec![service("postgres"), service("rabbitmq")],
            ..StatusReport::default()
        };
        Self {
            report: Mutex::new(report),
            events: broadcast::channel(64).0,
            shutdown_requested: Mutex::new(Some(shutdown)),
            tunnel_check: Mutex::new(Err(ActionError::Conflict(
                "the tunnel is not open: share first".into(),
            ))),
            email: kept_email(),
            video: received_video(),
        }
    }

    fn set_state(&self, service: &str, state: ServiceState) -> Result<(), ActionError> {
        let snapshot = {
            let mut report = self.report.lock().unwrap();
            let entry = report
                .services
                .iter_mut()
                .find(|s| s.name == service)
                .ok_or_else(|| ActionError::UnknownService(service.into()))?;
            entry.state = state;
            report.ready = report
                .services
                .iter()
                .all(|s| s.state == ServiceState::Ready);
            report.clone()
        };
        let _ = self.events.send(PanelEvent::Status { report: snapshot });
        Ok(())
    }
}

#[async_trait::async_trait]
impl ControlPlane for TestInstance {
    async fn status(&self) -> StatusReport {
        self.report.lock().unwrap().clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<PanelEvent> {
        self.events.subscribe()
    }

    async fn service_action(
        &self,
        service: &ServiceName,
        action: ServiceAction,
    ) -> Result<(), ActionError> {
        let state = match action {
            ServiceAction::Stop => ServiceState::Stopped,
            ServiceAction::Start | ServiceAction::Restart => ServiceState::Ready,
        };
        self.set_state(service.as_str(), state)
    }

    async fn stack_action(&self, action: StackAction) -> Result<(), ActionError> {
        let names: Vec<String> = {
            let report = self.report.lock().unwrap();
            report.services.iter().map(|s| s.name.clone()).collect()
        };
        let state = match action {
            StackAction::Start => ServiceState::Ready,
            StackAction::Stop => ServiceState::Stopped,
        };
        for name in names {
            self.set_state(&name, state)?;
        }
        Ok(())
    }

    async fn logs(&self, service: &ServiceName, tail: usize) -> Result<Vec<String>, ActionError> {
        if !self
            .report
            .lock()
            .unwrap()
            .services
            .iter()
            .any(|s| s.name == service.as_str())
        {
            return Err(ActionError::UnknownService(service.to_string()));
        }
        let lines: Vec<String> = (1..=3).map(|n| format!("{service} line {n}")).collect();
        Ok(lines[lines.len().saturating_sub(tail)..].to_vec())
    }

    async fn tunnel_check(&self) -> Result<TunnelCheck, ActionError> {
        self.tunnel_check.lock().unwrap().clone()
    }

    async fn emails(&self) -> Result<Vec<EmailSummary>, ActionError> {
        Ok(vec![self.email.summary.clone()])
    }

    async fn email(&self, id: uuid::Uuid) -> Result<EmailMessage, ActionError> {
        if id == self.email.summary.id {
            Ok(self.email.clone())
        } else {
            Err(ActionError::NotFound(format!("email {id}")))
        }
    }

    async fn videos(&self) -> Result<Vec<VideoSummary>, ActionError> {
        Ok(vec![self.video.clone()])
    }

    async fn video_file(&self, id: uuid::Uuid) -> Result<VideoFile, ActionError> {
        if id == UNREACHABLE_VIDEO {
            return Err(ActionError::Upstream(
                "the video storage s3://lab-videos did not answer within 10 s".into(),
            ));
        }
        if id != self.video.id {
            return Err(ActionError::NotFound(format!("video {id}")));
        }
        Ok(VideoFile {
            file_name: format!("{}.mp4", self.video.file_name),
            content_type: "video/mp4".into(),
            size: VIDEO.len() as u64,
            content: Box::new(StoredBytes(VIDEO)),
        })
    }

    async fn shutdown(&self) {
        if let Some(tx) = self.shutdown_requested.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

fn kept_email() -> EmailMessage {
    let summary = EmailSummary {
        id: uuid::Uuid::new_v4(),
        template: "build_succeeded".into(),
        to: vec!["ada@lab.example".into()],
        subject: Some("Your study was built".into()),
        status: "kept".into(),
        created_at: chrono::Utc::now(),
        sent_at: None,
    };
    EmailMessage {
        headers: vec![EmailHeader {
            name: "To".into(),
            value: "ada@lab.example".into(),
        }],
        text: Some("It is built.".into()),
        html: Some("<p>It is <b>built</b>.</p>".into()),
        error: None,
        summary,
    }
}

/// The file of the received video: a few bytes stand in for the MP4.
const VIDEO: &[u8] = b"not really an mp4";

/// A video whose store does not answer.
const UNREACHABLE_VIDEO: uuid::Uuid = uuid::Uuid::from_u128(0x5703e);

/// A video's bytes in memory, handed out in 4-byte chunks as a store streams them.
struct StoredBytes(&'static [u8]);

#[async_trait::async_trait]
impl VideoContent for StoredBytes {
    async fn read(
        self: Box<Self>,
        range: std::ops::Range<u64>,
    ) -> Result<lookit_panel::ByteStream, ActionError> {
        let part = &self.0[range.start as usize..range.end as usize];
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = part
            .chunks(4)
            .map(|chunk| Ok(bytes::Bytes::from_static(chunk)))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }
}

/// A received video, stored.
fn received_video() -> VideoSummary {
    let study_id = uuid::Uuid::new_v4();
    let response_id = uuid::Uuid::new_v4();
    VideoSummary {
        id: uuid::Uuid::new_v4(),
        file_name: format!("videoStream_{study_id}_1-intro_{response_id}_1700000000000_123"),
        study_id,
        study: "Demo study".into(),
        response_id,
        frame_id: "1-intro".into(),
        consent: false,
        recorded_at: chrono::Utc::now(),
        location: "s3://lab-videos/pipe/video.mp4".into(),
        stored: StoredState::Stored,
        size_bytes: Some(VIDEO.len() as u64),
    }
}

/// A panel on a free port; `shutdown_requested` resolves when a client asked it to stop.
struct Panel {
    base: String,
    port: u16,
    instance: Arc<TestInstance>,
    http: reqwest::Client,
    shutdown_requested: Option<oneshot::Receiver<()>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_panel() -> Panel {
    // The process's one rustls provider, as the binaries install it at start-up.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (requested_tx, requested_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let instance = Arc::new(TestInstance::new(requested_tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = PanelState {
        control: instance.clone(),
        token: SecretString::from(TOKEN),
    };
    let server = tokio::spawn(lookit_panel::run(listener, state, async move {
        let _ = stop_rx.await;
    }));
    Panel {
        base: format!("http://127.0.0.1:{port}"),
        port,
        instance,
        http: reqwest::Client::new(),
        shutdown_requested: Some(requested_rx),
        stop: Some(stop_tx),
        server,
    }
}

impl Panel {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn status_is_served_to_a_client_with_the_token() {
    let panel = start_panel().await;
    let (status, body) = json(panel.get("/api/status").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["services"][0]["name"], "postgres");
    assert_eq!(body["services"][0]["state"], "ready");
    panel.stop().await;
}

#[tokio::test]
async fn api_refuses_without_the_token_or_with_a_wrong_one() {
    let panel = start_panel().await;
    let url = format!("{}/api/status", panel.base);
    for request in [
        panel.http.get(&url),
        panel.http.get(&url).bearer_auth("wrong"),
        panel.http.get(format!("{url}?token=wrong")),
    ] {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["code"], "unauthorized");
        assert!(body["error"].as_str().unwrap().contains("token"));
    }
    // EventSource cannot send headers: the query form works.
    let response = panel
        .http
        .get(format!("{url}?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    panel.stop().await;
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_refused_even_with_the_token() {
    let panel = start_panel().await;
    let refused = [
        panel
            .get("/api/status")
            .header("Host", format!("evil.example:{}", panel.port)),
        panel
            .get("/api/status")
            .header("Origin", "http://evil.example"),
        panel.post("/api/stack/stop").header("Origin", "null"),
        // The UI shell is public, but not to a rebinding attacker.
        panel
            .http
            .get(format!("{}/", panel.base))
            .header("Host", "attacker.example"),
    ];
    for request in refused {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["code"], "forbidden");
    }
    // A refused stop changed nothing.
    assert!(panel.instance.status().await.ready);

    let same_origin = panel
        .get("/api/status")
        .header("Origin", format!("http://localhost:{}", panel.port))
        .header("Host", format!("localhost:{}", panel.port));
    assert_eq!(same_origin.send().await.unwrap().status(), StatusCode::OK);
    panel.stop().await;
}

#[tokio::test]
async fn the_ui_shell_loads_without_the_token_and_forbids_framing() {
    let panel = start_panel().await;
    let response = panel
        .http
        .get(format!("{}/", panel.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert!(response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let page = response.text().await.unwrap();
    assert!(page.contains("Lookit Local"), "{page}");
    // The built UI's scripts load too; without a build, the page says how to make one.
    match page.split("src=\"/assets/").nth(1) {
        Some(rest) => {
            let script = &rest[..rest.find('"').unwrap()];
            let asset = panel
                .http
                .get(format!("{}/assets/{script}", panel.base))
                .send()
                .await
                .unwrap();
            assert_eq!(asset.status(), StatusCode::OK);
            assert!(asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"));
        }
        None => assert!(page.contains("npm --prefix ui run build"), "{page}"),
    }
    let (status, _) = json(
        panel
            .http
            .get(format!("{}/assets/missing.js", panel.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    panel.stop().await;
}

#[tokio::test]
async fn stopping_a_service_is_pushed_to_event_stream_clients() {
    let panel = start_panel().await;
    let response = panel.get("/api/events").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = sse_events(response);

    let first = events.next().await.unwrap();
    assert_eq!(first["type"], "status");
    assert_eq!(first["report"]["ready"], true);

    let (status, body) = json(
        panel
            .post("/api/services/postgres/stop")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["ok"].clone()),
        (StatusCode::OK, Value::Bool(true))
    );

    let pushed = events.next().await.unwrap();
    assert_eq!(pushed["type"], "status");
    assert_eq!(pushed["report"]["ready"], false);
    assert_eq!(pushed["report"]["services"][0]["state"], "stopped");

    let _ = panel.instance.events.send(PanelEvent::Notification {
        level: NotificationLevel::Error,
        title: "postgres crashed".into(),
        body: "restarting".into(),
    });
    let note = events.next().await.unwrap();
    assert_eq!(note["type"], "notification");
    assert_eq!(note["level"], "error");

    // Open event streams do not keep the panel from stopping.
    panel.stop().await;
    assert!(events.next().await.is_none());
}

/// The JSON payloads of an SSE response, one per event (keep-alive comments skipped).
fn sse_events(response: reqwest::Response) -> impl futures::Stream<Item = Value> + Unpin {
    let mut buffer = String::new();
    Box::pin(
        response
            .bytes_stream()
            .map(move |chunk| {
                buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap_or_default()));
                let mut out = Vec::new();
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let data: String = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if !data.is_empty() {
                        out.push(serde_json::from_str(&data).unwrap());
                    }
                }
                futures::stream::iter(out)
            })
            .flatten(),
    )
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let panel = start_panel().await;
    let cases = [
        (
            panel.post("/api/services/postgres/explode"),
            StatusCode::BAD_REQUEST,
            "start, stop or restart",
        ),
        (
            panel.post("/api/services/Bad%20Name/stop"),
            StatusCode::BAD_REQUEST,
            "not a service name",
        ),
        (
            panel.post("/api/services/nginx/stop"),
            StatusCode::NOT_FOUND,
            "no service named",
        ),
        (
            panel.get("/api/services/postgres/logs?tail=lots"),
            StatusCode::BAD_REQUEST,
            "tail must be",
        ),
        (
            panel.get("/api/services/postgres/logs?tail=99999999"),
            StatusCode::BAD_REQUEST,
            "tail must be",
        ),
        (
            panel.post("/api/builds/not-a-uuid/cancel"),
            StatusCode::BAD_REQUEST,
            "build id",
        ),
        (
            panel.get("/api/queues/nope/dead"),
            StatusCode::NOT_FOUND,
            "no queue",
        ),
        (
            panel.get("/api/nothing-here"),
            StatusCode::NOT_FOUND,
            "no such API route",
        ),
    ];
    for (request, expected, message) in cases {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{body} should say {message:?}"
        );
    }
    panel.stop().await;
}

#[tokio::test]
async fn parts_not_built_yet_say_so_instead_of_inventing_data() {
    let panel = start_panel().await;
    for request in [
        panel.get("/api/builds"),
        panel.post("/api/tunnel/start"),
        panel.get("/api/queues/builds/dead"),
        panel.get("/api/doctor"),
    ] {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(body["code"], "not_available");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("not available yet"));
    }
    panel.stop().await;
}

#[tokio::test]
async fn the_tunnel_check_names_each_hop_and_the_first_that_fails() {
    let panel = start_panel().await;
    let (status, body) = json(panel.get("/api/tunnel/check").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("share first"));

    let hop = |hop: &str, label: &str, result: HopOutcome, detail: Option<&str>| TunnelHop {
        hop: hop.into(),
        label: label.into(),
        result,
        detail: detail.map(Into::into),
    };
    *panel.instance.tunnel_check.lock().unwrap() = Ok(TunnelCheck {
        ok: false,
        first_failure: Some("database: unreachable: connection refused".into()),
        hops: vec![
            hop("public_url", "public URL", HopOutcome::Ok, None),
            hop("proxy", "inspector proxy", HopOutcome::Ok, None),
            hop("api", "Lookit API", HopOutcome::Ok, None),
            hop(
                "database",
                "database",
                HopOutcome::Failed,
                Some("unreachable: connection refused"),
            ),
            hop("broker", "broker", HopOutcome::NotChecked, None),
        ],
    });
    let (status, body) = json(panel.get("/api/tunnel/check").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], false);
    assert_eq!(
        body["first_failure"],
        "database: unreachable: connection refused"
    );
    let hops: Vec<(&str, &str)> = body["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hop"].as_str().unwrap(), h["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hops,
        [
            ("public_url", "ok"),
            ("proxy", "ok"),
            ("api", "ok"),
            ("database", "failed"),
            ("broker", "not_checked"),
        ]
    );
    assert_eq!(body["hops"][3]["detail"], "unreachable: connection refused");
    // The check is read-only: it needs the token like every API route.
    let anonymous = panel
        .http
        .get(format!("{}/api/tunnel/check", panel.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    panel.stop().await;
}

#[tokio::test]
async fn logs_return_the_requested_tail() {
    let panel = start_panel().await;
    let (status, body) = json(
        panel
            .get("/api/services/rabbitmq/logs?tail=2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["lines"],
        serde_json::json!(["rabbitmq line 2", "rabbitmq line 3"])
    );
    panel.stop().await;
}

#[tokio::test]
async fn stack_stop_and_start_reach_every_service() {
    let panel = start_panel().await;
    let response = panel.post("/api/stack/stop").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let report = panel.instance.status().await;
    assert!(report
        .services
        .iter()
        .all(|s| s.state == ServiceState::Stopped));
    panel.post("/api/stack/start").send().await.unwrap();
    assert!(panel.instance.status().await.ready);
    panel.stop().await;
}

#[tokio::test]
async fn shutdown_answers_then_asks_the_instance_to_stop() {
    let mut panel = start_panel().await;
    let (status, body) = json(panel.post("/api/shutdown").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["stopping"], true);
    let requested = panel.shutdown_requested.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), requested)
        .await
        .expect("the instance was asked to stop")
        .unwrap();
    panel.stop().await;
}

#[tokio::test]
async fn the_panel_refuses_to_listen_beyond_loopback() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let (tx, _rx) = oneshot::channel();
    let state = PanelState {
        control: Arc::new(TestInstance::new(tx)),
        token: SecretString::from(TOKEN),
    };
    let error = lookit_panel::run(listener, state, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn the_outbox_lists_messages_and_shows_one_with_headers_text_and_html() {
    let panel = start_panel().await;
    let (status, list) = json(panel.get("/api/emails").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["subject"], "Your study was built");
    assert_eq!(list[0]["status"], "kept");
    let id = list[0]["id"].as_str().unwrap().to_string();

    let (status, message) = json(
        panel
            .get(&format!("/api/emails/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["subject"], "Your study was built");
    assert_eq!(message["headers"][0]["name"], "To");
    assert_eq!(message["text"], "It is built.");
    assert_eq!(message["html"], "<p>It is <b>built</b>.</p>");

    let (status, body) = json(
        panel
            .get(&format!("/api/emails/{}", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = json(panel.get("/api/emails/not-an-id").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("email id"),
        "{body}"
    );
    panel.stop().await;
}

#[tokio::test]
async fn a_received_video_is_listed_and_plays_with_the_token_in_the_query() {
    let panel = start_panel().await;
    let (status, list) = json(panel.get("/api/videos").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["study"], "Demo study");
    assert_eq!(list[0]["size_bytes"], 17);
    assert_eq!(list[0]["stored"], "stored");
    assert_eq!(list[0]["location"], "s3://lab-videos/pipe/video.mp4");
    let id = list[0]["id"].as_str().unwrap();
    let file_name = format!("{}.mp4", list[0]["file_name"].as_str().unwrap());

    // A <video> element sends no Authorization header: the query carries the token.
    let url = format!("{}/api/videos/{id}/file", panel.base);
    let played = panel
        .http
        .get(format!("{url}?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(played.status(), StatusCode::OK);
    let headers = played.headers().clone();
    assert_eq!(headers["content-type"], "video/mp4");
    assert_eq!(headers["content-length"], "17");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["content-disposition"],
        format!("inline; filename=\"{file_name}\"").as_str()
    );
    assert_eq!(played.bytes().await.unwrap().as_ref(), VIDEO);
    // The Download link asks for an attachment.
    let downloaded = panel
        .http
        .get(format!("{url}?token={TOKEN}&download=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        downloaded.headers()["content-disposition"],
        format!("attachment; filename=\"{file_name}\"").as_str()
    );
    assert_eq!(
        panel.http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    panel.stop().await;
}

#[tokio::test]
async fn a_video_is_sent_in_the_parts_a_seeking_player_asks_for() {
    let panel = start_panel().await;
    let url = format!("/api/videos/{}/file", panel.instance.video.id);
    let part = |range: &'static str| {
        let request = panel.get(&url).header("Range", range);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let content_range = response
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            let length = response.headers()["content-length"].clone();
            let body = response.bytes().await.unwrap();
            assert_eq!(length.to_str().unwrap(), body.len().to_string(), "{range}");
            (status, content_range, body)
        }
    };
    let (status, content_range, body) = part("bytes=4-9").await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(content_range.as_deref(), Some("bytes 4-9/17"));
    assert_eq!(body.as_ref(), b"really");
    // What a <video> element sends first: everything from the start, as a part.
    let (status, content_range, body) = part("bytes=0-").await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(content_range.as_deref(), Some("bytes 0-16/17"));
    assert_eq!(body.as_ref(), VIDEO);
    let (_, content_range, body) = part("bytes=-3").await;
    assert_eq!(content_range.as_deref(), Some("bytes 14-16/17"));
    assert_eq!(body.as_ref(), b"mp4");
    // Several ranges are not served as such: the whole video comes instead.
    let (status, content_range, body) = part("bytes=0-1,4-5").await;
    assert_eq!((status, content_range), (StatusCode::OK, None));
    assert_eq!(body.as_ref(), VIDEO);

    let beyond = panel
        .get(&url)
        .header("Range", "bytes=17-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()["content-range"], "bytes */17");
    let (_, body) = json(beyond).await;
    assert_eq!(body["code"], "range_not_satisfiable");
    assert!(
        body["error"].as_str().unwrap().contains("17 bytes"),
        "{body}"
    );
    panel.stop().await;
}

#[tokio::test]
async fn a_missing_video_is_a_404_and_an_unreachable_store_a_502_naming_it() {
    let panel = start_panel().await;
    let (status, body) = json(
        panel
            .get(&format!("/api/videos/{}/file", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
    let (status, body) = json(
        panel
            .get(&format!("/api/videos/{UNREACHABLE_VIDEO}/file"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "upstream");
    assert!(
        body["error"].as_str().unwrap().contains("s3://lab-videos"),
        "{body}"
    );
    panel.stop().await;
}

#[tokio::test]
async fn starting_a_build_needs_a_study_id_in_the_body() {
    let panel = start_panel().await;
    for body in [
        "",
        "{}",
        "{\"study\": \"nope\"}",
        "{\"study\": null, \"extra\": 1}",
    ] {
        let (status, answer) =
            json(panel.post("/api/builds").body(body).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("\"study\""),
            "{answer}"
        );
    }
    // A valid request reaches the instance, which has no builds in this test.
    let (status, answer) = json(
        panel
            .post("/api/builds")
            .body(format!("{{\"study\": \"{}\"}}", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{answer}");
    panel.stop().await;
}
