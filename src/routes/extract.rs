//! What handlers take from a request besides its body: the current session.

use std::future::{Ready, ready};

use actix_identity::Identity;
use actix_session::SessionExt;
use actix_web::{FromRequest, HttpRequest, dev::Payload};
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::{CurrentSession, SESSION_ID_KEY};

/// The session row named in the session state, and the user of the identity: both, or 401.
impl FromRequest for CurrentSession {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id: Option<Uuid> = req.get_session().get(SESSION_ID_KEY).ok().flatten();
        let user_id = Identity::extract(req)
            .into_inner()
            .ok()
            .and_then(|identity| identity.id().ok())
            .and_then(|id| id.parse::<Uuid>().ok());
        ready(match (id, user_id) {
            (Some(id), Some(user_id)) => Ok(CurrentSession { id, user_id }),
            _ => Err(ApiError::LoginRequired),
        })
    }
}
