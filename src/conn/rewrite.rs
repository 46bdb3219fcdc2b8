//! Virtual models at the Body → Proxy handoff: the media detour (`routeMedia`) and the body
//! rewrite of a profile. Everything else goes upstream byte for byte.

use std::sync::Arc;

use crate::buf::Block;
use crate::error::ApiError;
use crate::h1::{BodyTracker, RequestFraming, RequestHead};
use crate::multipart::MultipartError;
use crate::profile::{Profile, RewriteError};
use crate::router::{Route, Routes};
use crate::scan::ScanError;

/// The route a body-routed request goes to: the named one, or its `routeMedia` target when
/// the body has a media content part.
pub(super) fn media_detour(routes: &Routes, named: Arc<Route>, saw_media: bool) -> Arc<Route> {
    match &named.route_media {
        Some(target) if saw_media => routes.get(target).cloned().unwrap_or(named),
        _ => named,
    }
}

/// The rewritten body for `profile`, and the head to send it with: the same head framed by
/// `Content-Length` (a chunked request becomes a Content-Length one; its trailers, if any, are
/// dropped). `first` holds the raw body bytes read with the head, `rest` the blocks after it.
pub(super) fn rewrite_body(
    profile: &Profile,
    head: &RequestHead,
    first: &[u8],
    rest: &[Block],
) -> Result<(Vec<u8>, RequestHead), ApiError> {
    let mut tracker = BodyTracker::for_request(head.framing);
    let mut payload = Vec::new();
    let mut collect = |data: &[u8]| payload.extend_from_slice(data);
    for raw in std::iter::once(first).chain(rest.iter().map(Block::filled)) {
        tracker.feed(raw, &mut collect).map_err(ApiError::from)?;
    }
    let body = profile.rewrite(&payload).map_err(|e| match e {
        RewriteError::Parse => {
            ApiError::BadRequest("this model's profile rewrites JSON bodies: send one JSON object")
        }
        RewriteError::TooManyValues => ApiError::BadRequest(
            "this model's profile rewrites JSON bodies of at most 1048576 values",
        ),
    })?;
    let mut head = head.clone();
    head.framing = RequestFraming::Length(body.len() as u64);
    Ok((body, head))
}

/// The body verdict of a `/route/` request made with a scoped token. A backend serving
/// several models follows the body's `model`, so it must be in the token's scope; a body
/// without one goes to the path's model. Two models, or one that is not a name (a number,
/// an overlong string), are refused rather than left to the upstream's reading.
pub(super) fn scoped_path_verdict<'a>(
    verdict: Result<&'a str, ApiError>,
    route: &Route,
    routes: &Routes,
    token: Option<usize>,
) -> Result<&'a str, ApiError> {
    match verdict {
        Ok(model) if routes.token_allows_body_model(token, route, model) => Ok(model),
        Ok(model) => Err(ApiError::ModelNotAllowed(model.to_owned())),
        Err(ApiError::Multipart(MultipartError::MissingModel)) => {
            Err(ApiError::Scan(ScanError::MissingModel))
        }
        Err(
            ApiError::Scan(ScanError::DuplicateModel | ScanError::InvalidModel)
            | ApiError::Multipart(MultipartError::DuplicateModel | MultipartError::InvalidModel),
        ) => Err(ApiError::BadRequest(
            "with a scoped token, a /route/ body names at most one model, as a string",
        )),
        other => other,
    }
}
