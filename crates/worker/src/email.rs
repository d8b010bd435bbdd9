//! The `email` queue (§3): render a row of the `emails` outbox with its named template (text and
//! HTML) and send it through SMTP, or keep it in the outbox when no SMTP server is configured.
//!
//! Invariant: an email row leaves status `queued` exactly once, under a row lock, in the same
//! transaction that records the job as processed, so a redelivered job never sends twice.

use std::sync::Arc;

use anyhow::Context as _;
use lettre::message::header::ContentType;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use lookit_contracts::{EmailJob, Queue};
use minijinja::{Environment, UndefinedBehavior};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{JobError, JobHandler, Publisher};
use crate::ledger;
use crate::settings::WorkerSettings;
use crate::WorkerEvent;

macro_rules! template {
    ($name:literal) => {
        (
            $name,
            [
                (
                    concat!($name, ".subject.txt"),
                    include_str!(concat!("../templates/", $name, ".subject.txt")),
                ),
                (
                    concat!($name, ".txt"),
                    include_str!(concat!("../templates/", $name, ".txt")),
                ),
                (
                    concat!($name, ".html"),
                    include_str!(concat!("../templates/", $name, ".html")),
                ),
            ],
        )
    };
}

/// Templates by name, each with its subject, text and HTML parts (file name, source). HTML parts
/// are auto-escaped (by their `.html` name). Participant mail must carry an `unsubscribe_url` in
/// its context (it becomes the `List-Unsubscribe` header).
type TemplateFiles = (&'static str, [(&'static str, &'static str); 3]);
const TEMPLATES: &[TemplateFiles] = &[
    template!("build_succeeded"),
    template!("build_failed"),
    template!("study_state_changed"),
    template!("participant_message"),
];

/// The HTML every email is wrapped in when it is sent: the logo at the top, as in Lookit's emails.
/// The outbox keeps the template's own HTML (the dashboard shows it without the frame).
const LAYOUT: (&str, &str) = ("layout.html", include_str!("../templates/layout.html"));

/// Images sent inline with every email as parts of a `multipart/related` HTML body, by their
/// Content-ID (RFC 2392: the HTML shows them as `cid:<id>`, no remote image to load).
const INLINE_IMAGES: &[InlineImage] = &[InlineImage {
    content_id: LOGO_CONTENT_ID,
    content_type: "image/png",
    bytes: include_bytes!("../../../icons/128x128.png"),
}];

/// The logo's Content-ID, referenced by the layout.
const LOGO_CONTENT_ID: &str = "lookit-logo@lookit-local";

struct InlineImage {
    content_id: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Templates whose recipients are participants.
const PARTICIPANT_TEMPLATES: &[&str] = &["participant_message"];

/// What became of an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailOutcome {
    Sent,
    Kept,
    Failed,
}

/// Renders and delivers emails.
pub struct Mailer {
    templates: Environment<'static>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

struct Rendered {
    subject: String,
    text: String,
    html: String,
}

impl Mailer {
    pub fn new(settings: &WorkerSettings) -> anyhow::Result<Mailer> {
        let mut templates = Environment::new();
        // A context without a value the template uses is an error, not an empty hole in a mail.
        templates.set_undefined_behavior(UndefinedBehavior::Strict);
        for (_, files) in TEMPLATES {
            for (file, source) in files {
                templates.add_template(file, source)?;
            }
        }
        templates.add_template(LAYOUT.0, LAYOUT.1)?;
        let smtp = match &settings.smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .context("email.smtp_url is not a valid SMTP URL")?
                    .build(),
            ),
            None => None,
        };
        let from = settings.from_address.parse().with_context(|| {
            format!("from-address {:?} is not an address", settings.from_address)
        })?;
        Ok(Mailer {
            templates,
            smtp,
            from,
        })
    }

    fn render(&self, template: &str, context: &serde_json::Value) -> anyhow::Result<Rendered> {
        anyhow::ensure!(
            TEMPLATES.iter().any(|(name, ..)| *name == template),
            "unknown email template {template:?}"
        );
        let render = |suffix: &str| {
            self.templates
                .get_template(&format!("{template}.{suffix}"))
                .and_then(|t| t.render(context))
                .with_context(|| format!("render {template}.{suffix}"))
        };
        Ok(Rendered {
            subject: render("subject.txt")?.trim().to_string(),
            text: render("txt")?,
            html: render("html")?,
        })
    }

    fn message(
        &self,
        template: &str,
        to: &[String],
        headers: &serde_json::Value,
        context: &serde_json::Value,
        rendered: &Rendered,
    ) -> anyhow::Result<Message> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(rendered.subject.clone());
        for address in to {
            builder = builder.to(address
                .parse()
                .with_context(|| format!("recipient {address:?} is not an address"))?);
        }
        if let Some(headers) = headers.as_object() {
            for (name, value) in headers {
                let value = value
                    .as_str()
                    .with_context(|| format!("header {name} is not a string"))?;
                builder = builder.raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii(name.clone())
                        .with_context(|| format!("{name:?} is not a header name"))?,
                    value.to_string(),
                ));
            }
        }
        if PARTICIPANT_TEMPLATES.contains(&template) {
            let url = context
                .get("unsubscribe_url")
                .and_then(|v| v.as_str())
                .context("participant mail needs an unsubscribe_url")?;
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ));
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(rendered.text.clone()))
                    .multipart(self.html_with_images(rendered)?),
            )
            .context("assemble the message")
    }

    /// The HTML in its layout, with the images it shows by `cid:` as inline parts next to it.
    fn html_with_images(&self, rendered: &Rendered) -> anyhow::Result<MultiPart> {
        let html = self
            .templates
            .get_template(LAYOUT.0)
            .and_then(|layout| {
                layout.render(minijinja::context! {
                    subject => &rendered.subject,
                    logo_cid => LOGO_CONTENT_ID,
                    // Already rendered (and escaped) by its own template.
                    content => minijinja::Value::from_safe_string(rendered.html.clone()),
                })
            })
            .context("render the email layout")?;
        let mut related = MultiPart::related().singlepart(SinglePart::html(html.clone()));
        for image in INLINE_IMAGES
            .iter()
            .filter(|image| html.contains(&format!("cid:{}", image.content_id)))
        {
            let content_type = ContentType::parse(image.content_type)
                .with_context(|| format!("{} is not a content type", image.content_type))?;
            related = related.singlepart(
                Attachment::new_inline(image.content_id.to_string())
                    .body(image.bytes.to_vec(), content_type),
            );
        }
        Ok(related)
    }
}

/// Consumer of the `email` queue.
pub(crate) struct EmailHandler {
    pub pool: PgPool,
    pub mailer: Arc<Mailer>,
    pub events: broadcast::Sender<WorkerEvent>,
}

#[derive(sqlx::FromRow)]
struct EmailRow {
    template: String,
    context: serde_json::Value,
    to_addresses: Vec<String>,
    headers: serde_json::Value,
    status: String,
}

impl JobHandler for EmailHandler {
    const QUEUE: Queue = Queue::Email;
    type Job = EmailJob;

    fn job_id(job: &EmailJob) -> Uuid {
        job.job_id
    }

    async fn handle(
        &self,
        job: &EmailJob,
        _publisher: &Publisher,
        _cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let mut tx = self.pool.begin().await?;
        if ledger::is_processed(&mut tx, job.job_id).await? {
            return Ok(());
        }
        let row: Option<EmailRow> = sqlx::query_as(
            "SELECT template, context, to_addresses, headers, status FROM emails WHERE id = $1 FOR UPDATE",
        )
        .bind(job.email_id)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or_else(|| {
            JobError::Permanent(anyhow::anyhow!("there is no email {}", job.email_id))
        })?;
        if row.status == "queued" {
            let (outcome, rendered) = self.deliver(&row).await?;
            sqlx::query(
                "UPDATE emails SET status = $2, subject = $3, body_text = $4, body_html = $5,
                        error = NULL, sent_at = CASE WHEN $2 = 'sent' THEN now() END
                 WHERE id = $1",
            )
            .bind(job.email_id)
            .bind(match outcome {
                EmailOutcome::Sent => "sent",
                _ => "kept",
            })
            .bind(&rendered.subject)
            .bind(&rendered.text)
            .bind(&rendered.html)
            .execute(&mut *tx)
            .await?;
            ledger::mark_processed(&mut tx, job.job_id, Queue::Email).await?;
            tx.commit().await?;
            let _ = self.events.send(WorkerEvent::Email {
                email_id: job.email_id,
                outcome,
            });
        } else {
            ledger::mark_processed(&mut tx, job.job_id, Queue::Email).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn give_up(
        &self,
        job: &EmailJob,
        _publisher: &Publisher,
        error: &str,
    ) -> anyhow::Result<()> {
        let updated = sqlx::query(
            "UPDATE emails SET status = 'failed', error = $2 WHERE id = $1 AND status = 'queued'",
        )
        .bind(job.email_id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() > 0 {
            let _ = self.events.send(WorkerEvent::Email {
                email_id: job.email_id,
                outcome: EmailOutcome::Failed,
            });
        }
        Ok(())
    }
}

impl EmailHandler {
    /// Renders the row and sends it (SMTP configured) or keeps it. Rendering problems are
    /// permanent; SMTP trouble is worth a retry.
    async fn deliver(&self, row: &EmailRow) -> Result<(EmailOutcome, Rendered), JobError> {
        let rendered = self
            .mailer
            .render(&row.template, &row.context)
            .map_err(JobError::Permanent)?;
        let message = self
            .mailer
            .message(
                &row.template,
                &row.to_addresses,
                &row.headers,
                &row.context,
                &rendered,
            )
            .map_err(JobError::Permanent)?;
        let Some(smtp) = &self.mailer.smtp else {
            return Ok((EmailOutcome::Kept, rendered));
        };
        smtp.send(message)
            .await
            .context("send through SMTP")
            .map_err(JobError::Retry)?;
        Ok((EmailOutcome::Sent, rendered))
    }
}
