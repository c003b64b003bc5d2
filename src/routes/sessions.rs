//! `GET /api/sessions`, `DELETE /api/sessions/{id}` and `DELETE /api/sessions`: the user's own
//! sessions.

use actix_session::SessionExt;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::CurrentSession;
use crate::session::user_sessions::{self, EndedOne, Enders};
use crate::state::AppState;

fn enders(state: &AppState) -> Enders<'_> {
    Enders {
        pool: &state.pool,
        keys: &state.keys,
        cache: &state.cache,
        providers: &state.providers,
    }
}

/// `GET /api/sessions` → the user's live sessions, newest first, with the request's own
/// marked `current`.
pub async fn list(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sessions = user_sessions::list(&state.pool, &current, state.clock.now()).await?;
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.public_id,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "expires_at": s.absolute_expires_at,
                "idle_expires_at": s.idle_expires_at,
                "provider": s.provider,
                "user_agent": s.user_agent,
                "current": s.id == current.id,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

/// `DELETE /api/sessions/{id}` → 204 once that session has ended on every instance; 404 when
/// it is not one of the user's live sessions (a malformed id is none). Ending the request's
/// own session clears its cookie, like a logout without the provider's page.
pub async fn end_one(
    req: HttpRequest,
    path: web::Path<String>,
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound("no such session".into());
    let public_id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    let ended =
        user_sessions::end_one(&enders(&state), &current, public_id, state.clock.now()).await?;
    match ended {
        EndedOne::NotFound => return Err(not_found()),
        EndedOne::Current => req.get_session().purge(),
        EndedOne::Other => {}
    }
    metrics::counter!("courier_logouts_total", "kind" => "user_ended").increment(1);
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /api/sessions` → 204 once every other session of the user has ended on every
/// instance; 401 `reauth_required` when the user's sign-in is 10 minutes old or more.
pub async fn end_others(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ended = user_sessions::end_others(&enders(&state), &current, state.clock.now()).await?;
    metrics::counter!("courier_logouts_total", "kind" => "user_ended").increment(ended);
    Ok(HttpResponse::NoContent().finish())
}
