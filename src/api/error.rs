//! The one error shape of the API: `{"code": …, "detail": …}`.
//!
//! Validation errors (422) carry `detail` as a list of
//! `{"loc": [...], "msg": …, "type": …}`, the form the Svix SDKs parse.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 422: a field of the request is invalid. `location` is like `["body", "url"]`.
    Validation {
        location: Vec<String>,
        message: String,
    },
    /// Any other error status with a code and a sentence.
    Status {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// Builds a 422 for a body field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            location: vec!["body".to_owned(), field.to_owned()],
            message: message.into(),
        }
    }

    /// Builds a 422 for a query parameter.
    pub fn query(param: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            location: vec!["query".to_owned(), param.to_owned()],
            message: message.into(),
        }
    }

    /// Moves a body field's 422 to another part of the request, such as
    /// `"query"` or `"path"`, for rules shared by body fields and parameters.
    pub fn located_in(self, part: &str) -> Self {
        match self {
            Self::Validation {
                mut location,
                message,
            } => {
                if let Some(first) = location.first_mut() {
                    part.clone_into(first);
                }
                Self::Validation { location, message }
            }
            other => other,
        }
    }

    /// Nests a body field's 422 under `parent`, so `["body", "name"]`
    /// becomes `["body", parent, "name"]`.
    pub fn nested_in(self, parent: &str) -> Self {
        match self {
            Self::Validation {
                mut location,
                message,
            } => {
                location.insert(1.min(location.len()), parent.to_owned());
                Self::Validation { location, message }
            }
            other => other,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::Status {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            detail: format!("{what} not found"),
        }
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::CONFLICT,
            code: "conflict",
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
        }
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::Status {
            status: StatusCode::UNAUTHORIZED,
            code: "authentication_failed",
            detail: detail.to_owned(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(field) => Self::conflict(format!("{field} is already in use")),
            err if err.is_unavailable() => Self::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "store_unavailable",
                detail: "the store cannot take writes right now; try again".to_owned(),
            },
            other => {
                tracing::error!(error = %other, "store operation failed");
                Self::Status {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    detail: "internal error; see the server log".to_owned(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Validation { location, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "code": "validation",
                    "detail": [{"loc": location, "msg": message, "type": "value_error"}],
                })),
            )
                .into_response(),
            Self::Status {
                status,
                code,
                detail,
            } => (status, Json(json!({"code": code, "detail": detail}))).into_response(),
        }
    }
}
