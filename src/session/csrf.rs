//! The CSRF guard on `/api/*`: every request carries `X-CSRF: 1`. A cross-site form cannot set
//! a custom header, and a cross-site fetch that does needs a CORS preflight courier never grants.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::error::ApiError;

pub async fn require_csrf_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let has_header = req
        .headers()
        .get("x-csrf")
        .is_some_and(|v| v.as_bytes() == b"1");
    if has_header {
        Ok(next.call(req).await?.map_into_left_body())
    } else {
        Ok(req
            .error_response(ApiError::CsrfRequired)
            .map_into_right_body())
    }
}
