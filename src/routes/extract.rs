//! What handlers take from a request besides its body: the current session.

use std::future::{Ready, ready};

use actix_identity::Identity;
use actix_session::SessionExt;
use actix_web::{FromRequest, HttpRequest, dev::Payload};
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::{CurrentSession, SESSION_ENDED_KEY, SESSION_ID_KEY, SESSION_PROVIDER_KEY};

/// The session row named in the session state, its login provider, and the user of the
/// identity: all, or 401 (`reauth_required` for the request that finds the session ended with
/// its grant, `login_required` otherwise).
impl FromRequest for CurrentSession {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let session = req.get_session();
        if session.contains_key(SESSION_ENDED_KEY) {
            return ready(Err(ApiError::ReauthRequired));
        }
        let id: Option<Uuid> = session.get(SESSION_ID_KEY).ok().flatten();
        let provider: Option<String> = session.get(SESSION_PROVIDER_KEY).ok().flatten();
        let user_id = Identity::extract(req)
            .into_inner()
            .ok()
            .and_then(|identity| identity.id().ok())
            .and_then(|id| id.parse::<Uuid>().ok());
        ready(match (id, user_id, provider) {
            (Some(id), Some(user_id), Some(provider)) => Ok(CurrentSession {
                id,
                user_id,
                provider,
            }),
            _ => Err(ApiError::LoginRequired),
        })
    }
}
