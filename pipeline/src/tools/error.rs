//! Why a tool stopped: typed, with what it was doing and the cause kept.

use erpstream_connectors::kafka::PublishError;
use erpstream_schemas::CodecError;
use rdkafka::error::KafkaError;

use crate::topology::TopologyErrors;

/// Why a data-team tool could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The command asks for something that cannot be done as given; says what to give.
    #[error("{0}")]
    Usage(String),
    /// The topology file does not validate.
    #[error("{path}: {source}")]
    Topology {
        /// The file.
        path: String,
        /// Its problems.
        #[source]
        source: TopologyErrors,
    },
    /// The topic to read is not on the broker.
    #[error("topic {0} does not exist on the broker")]
    NoSuchTopic(String),
    /// The broker failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What the tool was doing.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The registry client could not be built (its CA file, its password).
    #[error(transparent)]
    RegistryAccess(#[from] crate::topology::RegistryAccessError),
    /// The brokers refused this client or did not answer.
    #[error(transparent)]
    Connect(#[from] erpstream_connectors::kafka::ConnectError),
    /// The broker did not take a record.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The registry or the bytes failed a decode or encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What the tool was doing.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP source did not answer as needed.
    #[error("{what}: {source}")]
    Http {
        /// What the tool was doing.
        what: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A database refused.
    #[error("{what}: {source}")]
    Database {
        /// What the tool was doing.
        what: String,
        /// The driver's error.
        #[source]
        source: erpstream_connectors::postgres::PgError,
    },
    /// What was read does not have the expected shape.
    #[error("{what}: {reason}")]
    Data {
        /// What was read.
        what: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// JSON could not be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl ToolError {
    /// A refusal of what was asked.
    pub fn usage(message: impl Into<String>) -> Self {
        ToolError::Usage(message.into())
    }

    /// `what` was read but is not what was expected.
    pub fn data(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ToolError::Data {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Says what the tool was doing when a call failed.
pub trait Doing<T> {
    /// The error, with `what` the tool was doing.
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, ToolError>;
}

macro_rules! doing {
    ($error:ty, $variant:ident) => {
        impl<T> Doing<T> for Result<T, $error> {
            fn doing(self, what: impl FnOnce() -> String) -> Result<T, ToolError> {
                self.map_err(|source| ToolError::$variant {
                    what: what(),
                    source,
                })
            }
        }
    };
}

doing!(KafkaError, Kafka);
doing!(std::io::Error, Io);
doing!(reqwest::Error, Http);
doing!(erpstream_connectors::postgres::PgError, Database);

impl<T> Doing<T> for Result<T, tokio_postgres::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, ToolError> {
        self.map_err(erpstream_connectors::postgres::PgError::Postgres)
            .doing(what)
    }
}
