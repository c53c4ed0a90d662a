//! The one translation of errors into HTTP: a status and `{"error":{"code","message"}}`. Internal
//! errors are logged with their detail and shown to clients only as "internal error".

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error answer; its message is masked (`broker::redact`): an error may quote a key.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match broker::redact::mask(&message) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(masked) => masked,
        };
        Self {
            status,
            code,
            message,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the client is told (never an internal error's detail).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<broker::Error> for ApiError {
    fn from(e: broker::Error) -> Self {
        use broker::Error as E;
        let status = match &e {
            E::InvalidName(_) | E::InvalidArgument { .. } | E::SendToSelf => {
                StatusCode::BAD_REQUEST
            }
            E::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::UnknownAgent { .. } | E::NoSuchAgent { .. } | E::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            E::NotAllowed { .. } => StatusCode::FORBIDDEN,
            E::Conflict(_)
            | E::UnsafePath(_)
            | E::Stale(_)
            | E::WidensIsolation(_)
            | E::CheckFailed(_) => StatusCode::CONFLICT,
            E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            E::ShuttingDown | E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::BuildFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::InboxFull { .. } | E::TooManyQuestions { .. } | E::TooManyReminders { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            E::Internal(_)
            | E::Runtime(_)
            | E::Git { .. }
            | E::Corrupt(_)
            | E::SchemaTooNew { .. }
            | E::Store(_)
            | E::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if e.is_internal() {
            tracing::error!(error = %broker::redact::mask(&e.to_string()),
                "internal error answering an API request");
            return Self::new(status, e.code(), "internal error");
        }
        Self::new(status, e.code(), e.to_string())
    }
}

/// What a request over the API's body limit is told (the limit follows `[mailbox]
/// max_body_bytes`, which is what a user meets first).
pub const TOO_LARGE: &str = "the request is over the admin API's size limit: a message body may \
     be at most [mailbox] max_body_bytes (64 KiB by default)";

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let (code, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ("request_too_large", TOO_LARGE.to_owned()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", r.body_text()),
            _ => ("invalid_json", r.body_text()),
        };
        Self::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_never_carries_a_key() {
        broker::redact::remember("sk-dash-error-test-key-0123456789");
        let e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the file held sk-dash-error-test-key-0123456789 and x-api-key: abcdefgh12345678",
        );
        assert!(!e.message.contains("sk-dash-error"), "{}", e.message);
        assert!(!e.message.contains("abcdefgh12345678"), "{}", e.message);
        assert!(e.message.contains(broker::redact::MASK), "{}", e.message);
    }
}
