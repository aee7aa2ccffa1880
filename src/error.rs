//! Errors of the glue and the one place that maps request errors to nginx status codes.

use gateway_metrics_core::buckets::BucketsError;
use gateway_metrics_core::config::ConfigError;
use nginx_sys::{
    ngx_int_t, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED,
    NGX_HTTP_REQUEST_TIME_OUT, NGX_HTTP_SERVICE_UNAVAILABLE,
};

/// A configuration error; logged as `<message> in "<directive>" directive`, except
/// [`ConfError::Duplicate`], which nginx words itself (`"<directive>" directive is duplicate`).
/// Errors of the arguments themselves are core's [`ConfigError`].
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("is duplicate")]
    Duplicate,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Other(String),
}

impl ConfError {
    pub fn msg(m: &'static str) -> Self {
        ConfError::Config(ConfigError::Msg(m))
    }

    /// `invalid <what> "<value>"`.
    pub fn invalid(what: &'static str, value: impl Into<String>) -> Self {
        ConfError::Config(ConfigError::Invalid(what, value.into()))
    }
}

impl From<BucketsError> for ConfError {
    fn from(e: BucketsError) -> Self {
        ConfError::Config(e.into())
    }
}

/// An error while serving a request of the module's own (the exporter).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("metrics zone is not ready")]
    ZoneUnavailable,
    #[error("out of memory")]
    #[cfg_attr(not(ngx_feature = "threads"), allow(dead_code))]
    NoMemory,
    /// The response header is out (a page sent in slices): the response can only be cut
    /// short, by closing the connection.
    #[error("response aborted after its header was sent")]
    Aborted,
    /// The client did not take the response within `send_timeout`.
    #[error("client timed out")]
    ClientTimedOut,
    /// The exporter asked for in a subrequest (SSI, `ngx.location.capture`).
    #[error("the metrics page cannot be served in a subrequest")]
    Subrequest,
}

impl HandlerError {
    /// The status code nginx finalizes the request with.
    pub fn status(&self) -> ngx_int_t {
        match self {
            HandlerError::MethodNotAllowed => NGX_HTTP_NOT_ALLOWED as ngx_int_t,
            HandlerError::ZoneUnavailable => NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t,
            HandlerError::NoMemory | HandlerError::Subrequest => {
                NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
            }
            HandlerError::Aborted => NGX_ERROR as ngx_int_t,
            // nginx terminates the request (no error page: the header is out).
            HandlerError::ClientTimedOut => NGX_HTTP_REQUEST_TIME_OUT as ngx_int_t,
        }
    }
}
