//! The scanner a body routed by its `model` goes through: the JSON scanner (`scan`), or the
//! multipart form scanner (`multipart`) when `Content-Type` says `multipart/form-data`. Both
//! are fed the de-chunked payload block by block and never copy it.

use crate::error::ApiError;
use crate::multipart::{self, MultipartScanner};
use crate::scan::ModelScanner;

pub(super) enum BodyScanner {
    Json(ModelScanner),
    /// JSON, also looking for media content parts (some model has `routeMedia`).
    JsonMedia(ModelScanner<true>),
    Multipart(MultipartScanner),
}

impl BodyScanner {
    /// The scanner for a request with this `Content-Type` value; an error for a multipart
    /// content type without a usable boundary.
    pub(super) fn for_content_type(content_type: Option<&[u8]>) -> Result<BodyScanner, ApiError> {
        match content_type {
            Some(ct) if multipart::is_form_data(ct) => {
                Ok(BodyScanner::Multipart(MultipartScanner::new(ct)?))
            }
            _ => Ok(BodyScanner::Json(ModelScanner::new())),
        }
    }

    /// Also notes media content parts of a JSON body (`routeMedia`); call before feeding.
    pub(super) fn with_media(self) -> BodyScanner {
        match self {
            BodyScanner::Json(_) => BodyScanner::JsonMedia(ModelScanner::with_media()),
            other => other,
        }
    }

    /// A JSON body had a media content part (see [`ModelScanner::with_media`]).
    pub(super) fn saw_media(&self) -> bool {
        matches!(self, BodyScanner::JsonMedia(s) if s.saw_media())
    }

    /// Feeds the next payload bytes; an error here is final.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<(), ApiError> {
        match self {
            BodyScanner::Json(s) => s.feed(data).map_err(ApiError::from),
            BodyScanner::JsonMedia(s) => s.feed(data).map_err(ApiError::from),
            BodyScanner::Multipart(s) => s.feed(data).map_err(ApiError::from),
        }
    }

    /// The body ended: its model, or why it has none.
    pub(super) fn finish(&mut self) -> Result<&str, ApiError> {
        match self {
            BodyScanner::Json(s) => s.finish().map_err(ApiError::from),
            BodyScanner::JsonMedia(s) => s.finish().map_err(ApiError::from),
            BodyScanner::Multipart(s) => s.finish().map_err(ApiError::from),
        }
    }
}
