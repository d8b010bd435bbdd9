/// Why the stack, or one of its services, could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("the image {image} for {service} is not on this machine and could not be pulled ({reason}); load it with `docker load -i <file>` or set `{service}.image` to an image you have")]
    ImageMissing {
        service: String,
        image: String,
        reason: String,
    },
    #[error("no Docker engine answers ({0}); start it with `sudo systemctl start docker` (or `sudo dockerd &`), or set `stack.backend = \"native\"`")]
    DockerUnavailable(String),
    #[error("{0}")]
    Config(String),
    #[error("there is no service named {0:?}: expected `postgres` or `rabbitmq`")]
    UnknownService(String),
    #[error("{service} did not start: {source:#}")]
    Start {
        service: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("{service} could not be stopped: {source:#}")]
    Stop {
        service: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("could not delete the data of {what}: {source:#}")]
    Purge {
        what: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("the supervisor of {0} is gone (the stack is shutting down)")]
    SupervisorGone(String),
}
