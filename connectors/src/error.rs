//! The error of every component of this crate, as the runtime sees it: each component's
//! own error kept as the source, classified where it was made.

use rdkafka::error::KafkaError;

use crate::kafka::{PublishError, Retriable};
use crate::secret::SecretError;
use crate::sinks::{erp_rest, planning_pg, storefront_webhook};
use crate::sources::{pg_cdc, planning_api, rest_poll};

/// Why a source or sink could not be built or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A Postgres connection could not be made or failed.
    #[error("postgres: {0}")]
    Postgres(#[from] crate::postgres::PgError),
    /// The broker refused a consumer or producer operation.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused a record for good.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A `storefront_webhook` sink failed.
    #[error(transparent)]
    StorefrontWebhook(#[from] storefront_webhook::SinkError),
    /// An `erp_rest` sink failed.
    #[error(transparent)]
    ErpRest(#[from] erp_rest::ErpRestError),
    /// A `planning_pg` sink failed.
    #[error(transparent)]
    PlanningPg(#[from] planning_pg::PlanningError),
    /// A `pg_cdc` source cannot work against its database.
    #[error(transparent)]
    PgCdc(#[from] pg_cdc::CdcError),
    /// A `rest_poll` source failed.
    #[error(transparent)]
    RestPoll(#[from] rest_poll::PollError),
    /// A `planning_api` source could not be set up.
    #[error(transparent)]
    PlanningApi(#[from] planning_api::PlanningApiError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting names something the topology does not run (validation prevents this).
    #[error("{setting}: {reason}")]
    Wiring {
        /// The setting's path.
        setting: String,
        /// What is missing.
        reason: String,
    },
}

impl<E: Into<Error>> From<crate::component::LeaseError<E>> for Error {
    fn from(err: crate::component::LeaseError<E>) -> Self {
        match err {
            crate::component::LeaseError::Database(e) => Error::Postgres(e),
            crate::component::LeaseError::Work(e) => e.into(),
        }
    }
}

impl Retriable for Error {
    fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka(e) => e.is_retriable(),
            Error::Publish(e) => e.is_retriable(),
            Error::PgCdc(e) => e.is_retriable(),
            _ => false,
        }
    }
}
