//! `/auth/login`, `/auth/callback` and `/auth/logout`: the sign-in flow's ends in the
//! console.
use std::{sync::Arc, time::Duration};

use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};

use super::Who;
use crate::console::{
    Console, SignIn,
    auth::{self, FLOW_COOKIE, SESSION_COOKIE},
    http::{Body, json, page, redirect},
    oidc::FLOW_TTL,
};

fn param(request: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Where to go after signing in: a path of this console, never another site.
fn local_path(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".to_owned())
}

fn set_cookie(response: &mut Response<Body>, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

pub fn login(console: &Console, request: &Request<Incoming>) -> Response<Body> {
    let next = local_path(param(request, "next"));
    match &console.sign_in {
        SignIn::Dev { .. } => redirect(&next),
        SignIn::Oidc(provider) => {
            let (state, url) = provider.begin(&next);
            let mut response = redirect(&url);
            set_cookie(
                &mut response,
                auth::set_cookie(FLOW_COOKIE, &state, "Lax", FLOW_TTL),
            );
            response
        }
    }
}

pub async fn callback(
    console: &Arc<Console>,
    request: &Request<Incoming>,
) -> (Response<Body>, Option<String>) {
    let refused = |message: &str| page(StatusCode::FORBIDDEN, "Sign-in refused", message, None);
    if let Some(error) = param(request, "error") {
        let detail = param(request, "error_description").unwrap_or_default();
        tracing::warn!(%error, %detail, "console sign-in: the provider refused");
        return (
            refused(&format!("The provider said: {error} {detail}")),
            None,
        );
    }
    let (Some(code), Some(state)) = (param(request, "code"), param(request, "state")) else {
        return (refused("The provider's answer has no code or state."), None);
    };
    let flow_cookie = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|cookies| auth::cookie(cookies, FLOW_COOKIE));
    if !flow_cookie.is_some_and(|cookie| auth::same_secret(cookie, &state)) {
        return (
            refused("This sign-in was not started in this browser (its state does not match)."),
            None,
        );
    }
    let finishing = console.clone();
    let result = tokio::task::spawn_blocking(move || match &finishing.sign_in {
        SignIn::Oidc(provider) => Some(provider.finish(&state, &code)),
        SignIn::Dev { .. } => None,
    })
    .await;
    let (reviewer, next) = match result {
        Ok(Some(Ok(done))) => done,
        Ok(Some(Err(error))) => {
            tracing::warn!(%error, "console sign-in refused");
            return (refused(&error.to_string()), None);
        }
        Ok(None) => return (redirect("/"), None),
        Err(error) => return (refused(&format!("sign-in failed: {error}")), None),
    };
    tracing::info!(
        login = %reviewer.login,
        subject = %reviewer.subject,
        role = reviewer.role.as_str(),
        "console sign-in"
    );
    let login = reviewer.login.clone();
    let session = console.sessions.start(reviewer);
    // A page, not a redirect: the provider's redirect here was a cross-site navigation,
    // and a SameSite=Strict cookie is sent only from the next, same-site one.
    let mut response = page(
        StatusCode::OK,
        "Signed in",
        "Signed in to Tollgate.",
        Some(&next),
    );
    set_cookie(
        &mut response,
        auth::set_cookie(SESSION_COOKIE, &session, "Strict", console.sessions.ttl()),
    );
    set_cookie(
        &mut response,
        auth::set_cookie(FLOW_COOKIE, "", "Lax", Duration::ZERO),
    );
    (response, Some(login))
}

pub fn logout(console: &Console, who: &Who) -> Response<Body> {
    if let Some(id) = &who.session {
        console.sessions.end(id);
    }
    let mut response = json(StatusCode::OK, &serde_json::json!({ "signed_out": true }));
    set_cookie(
        &mut response,
        auth::set_cookie(SESSION_COOKIE, "", "Strict", Duration::ZERO),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(
            local_path(Some("/sessions?repository=a".to_owned())),
            "/sessions?repository=a"
        );
        assert_eq!(local_path(Some("//evil.example/x".to_owned())), "/");
        assert_eq!(local_path(Some("https://evil.example/".to_owned())), "/");
        assert_eq!(local_path(Some("/\\evil.example".to_owned())), "/");
        assert_eq!(local_path(None), "/");
    }
}
