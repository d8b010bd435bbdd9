use lookit_config::Backend;
use secrecy::{ExposeSecret, SecretString};

/// How to reach the provisioned services. `Debug` never shows a password.
#[derive(Debug, Clone)]
pub struct Connections {
    pub backend: Backend,
    pub postgres: PostgresConnection,
    pub rabbitmq: RabbitConnection,
}

/// The Postgres database of Lookit and the role that owns it.
#[derive(Debug, Clone)]
pub struct PostgresConnection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: SecretString,
}

impl PostgresConnection {
    /// `postgres://user:password@host:port/database`.
    pub fn url(&self) -> SecretString {
        self.url_for_database(&self.database)
    }

    pub(crate) fn url_for_database(&self, database: &str) -> SecretString {
        let mut url = url::Url::parse("postgres://localhost/").expect("constant URL parses");
        fill_url(&mut url, &self.host, self.port, &self.user, &self.password);
        url.set_path(database);
        SecretString::from(url.to_string())
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The RabbitMQ broker, its admin user and (when it has one) its management API.
#[derive(Debug, Clone)]
pub struct RabbitConnection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    pub vhost: String,
    /// Base URL of the management API without credentials, e.g. `http://127.0.0.1:15672`.
    pub management_url: Option<url::Url>,
}

impl RabbitConnection {
    /// `amqp://user:password@host:port/<vhost, percent-encoded>`.
    pub fn amqp_url(&self) -> SecretString {
        let mut url = url::Url::parse("amqp://localhost/").expect("constant URL parses");
        fill_url(&mut url, &self.host, self.port, &self.user, &self.password);
        // The vhost is one path segment: `/` must be sent as `%2f`.
        url.path_segments_mut()
            .expect("amqp URLs have a path")
            .clear()
            .push(&self.vhost);
        SecretString::from(url.to_string())
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn fill_url(url: &mut url::Url, host: &str, port: u16, user: &str, password: &SecretString) {
    // These setters only fail for URLs that cannot have a host, which ours always can.
    let _ = url.set_host(Some(host));
    let _ = url.set_port(Some(port));
    let _ = url.set_username(user);
    let _ = url.set_password(Some(password.expose_secret()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabbit() -> RabbitConnection {
        RabbitConnection {
            host: "127.0.0.1".into(),
            port: 5672,
            user: "lookit-admin".into(),
            password: SecretString::from("s3cr3t-pw"),
            vhost: "/".into(),
            management_url: None,
        }
    }

    #[test]
    fn amqp_url_encodes_the_default_vhost() {
        assert_eq!(
            rabbit().amqp_url().expose_secret(),
            "amqp://lookit-admin:s3cr3t-pw@127.0.0.1:5672/%2F"
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let connections = Connections {
            backend: Backend::Native,
            postgres: PostgresConnection {
                host: "127.0.0.1".into(),
                port: 5432,
                database: "lookit".into(),
                user: "lookit".into(),
                password: SecretString::from("pg-pass-word"),
            },
            rabbitmq: rabbit(),
        };
        let shown = format!("{connections:?}");
        assert!(!shown.contains("pg-pass-word") && !shown.contains("s3cr3t-pw"));
        assert_eq!(
            connections.postgres.url().expose_secret(),
            "postgres://lookit:pg-pass-word@127.0.0.1:5432/lookit"
        );
    }
}
