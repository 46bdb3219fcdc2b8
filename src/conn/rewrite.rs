//! Virtual models at the Body → Proxy handoff: the media detour (`routeMedia`) and the body
//! rewrite of a profile, which is the chosen replica's (a replica may carry its own upstream
//! identity, issue 18): `fit_body` gives each replica its version of the body, again on a
//! failover to a replica that speaks differently. Everything else goes upstream byte for
//! byte.

use std::sync::Arc;

use crate::error::ApiError;
use crate::h1::{BodyTracker, RequestFraming, RequestHead};
use crate::multipart::MultipartError;
use crate::profile::{Profile, RewriteError};
use crate::router::{Route, Routes};
use crate::scan::ScanError;

use super::outbox::{Chunk, Outbox};
use super::replicas::Fitted;

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
/// dropped). `raw` is the body as the client framed it, in pieces.
pub(super) fn rewrite_body(
    profile: &Profile,
    head: &RequestHead,
    raw: &[&[u8]],
) -> Result<(Vec<u8>, RequestHead), ApiError> {
    let mut tracker = BodyTracker::for_request(head.framing);
    let mut payload = Vec::new();
    let mut collect = |data: &[u8]| payload.extend_from_slice(data);
    for piece in raw {
        tracker.feed(piece, &mut collect).map_err(ApiError::from)?;
    }
    let body = profile.rewrite(&payload).map_err(|e| match e {
        RewriteError::Parse => {
            ApiError::BadRequest("this model's profile rewrites JSON bodies: send one JSON object")
        }
        RewriteError::TooManyValues => ApiError::BadRequest(
            "this model's profile rewrites JSON bodies of at most 1048576 values",
        ),
    })?;
    let head = length_head(head, body.len() as u64);
    Ok((body, head))
}

/// `head` framed by `Content-Length: len`.
fn length_head(head: &RequestHead, len: u64) -> RequestHead {
    let mut head = head.clone();
    head.framing = RequestFraming::Length(len);
    head
}

/// Makes the body queued in `outbox` from chunk `from` on the one a replica with `profile`
/// gets (issue 18): the client's own bytes when it rewrites nothing (a replica that keeps
/// the client's model name gets them byte for byte), else its rewrite of them, made once
/// and kept while replicas with the same profile follow. The client's bytes stay parked in
/// `fitted` meanwhile. Returns the client's head framed for that body. Err: this replica's
/// rewrite refused the body.
pub(super) fn fit_body(
    profile: &Arc<Profile>,
    client_head: &RequestHead,
    fitted: &mut Option<Fitted>,
    outbox: &mut Outbox,
    from: usize,
) -> Result<RequestHead, ApiError> {
    let no_body = matches!(
        client_head.framing,
        RequestFraming::Empty | RequestFraming::Length(0)
    );
    if !profile.rewrites() || no_body {
        if let Some(f) = fitted.take() {
            // The rewrite goes; the client's bytes come back.
            drop(outbox.swap_from(from, f.parked));
        }
        return Ok(client_head.clone());
    }
    if let Some(f) = fitted
        .as_ref()
        .filter(|f| Arc::ptr_eq(&f.profile, profile) || f.profile == *profile)
    {
        return Ok(length_head(client_head, f.len));
    }
    let (body, head) = match fitted.as_ref() {
        Some(f) => {
            let raw: Vec<&[u8]> = f.parked.iter().map(Chunk::bytes).collect();
            rewrite_body(profile, client_head, &raw)?
        }
        None => rewrite_body(profile, client_head, &outbox.bytes_from(from))?,
    };
    let len = body.len() as u64;
    let previous = outbox.swap_from(from, vec![Chunk::Owned(body)]);
    match fitted {
        // The previous rewrite is dropped; the client's bytes stay parked.
        Some(f) => {
            f.profile = Arc::clone(profile);
            f.len = len;
        }
        None => {
            *fitted = Some(Fitted {
                profile: Arc::clone(profile),
                parked: previous,
                len,
            })
        }
    }
    Ok(head)
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
