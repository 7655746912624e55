//! The accept loop and the edge every request passes: latency, injected faults, the `Date`
//! header and the request log.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::api::{self, Shared};
use crate::state::{FaultKind, LogEntry};

/// Asks the connection task to drop the connection (with linger 0, so the peer sees a reset).
#[derive(Clone)]
struct KillConnection(Arc<Notify>);

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let router = api::router(state);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        // Linger 0 makes a dropped connection a reset (the fault we simulate); with a zero
        // timeout the close never blocks, which is what the deprecation warns about.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let kill_for_requests = kill.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(KillConnection(kill_for_requests.clone()));
                    router.clone().oneshot(req.map(Body::new))
                },
            );
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, () = kill.notified() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, () = kill.notified() => {} }
                }
            }
        });
    }
}

/// Pull the runner token out of a JSON (or form) body.
fn body_token(bytes: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return v.get("token").and_then(|t| t.as_str()).map(str::to_string);
    }
    std::str::from_utf8(bytes)
        .ok()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token=").map(str::to_string))
}

/// The `system_id` of a JSON or form body, else of the query string.
fn system_id(bytes: &[u8], query: Option<&str>) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Some(id) = v.get("system_id").and_then(|t| t.as_str()) {
            return Some(id.to_string());
        }
    }
    let form = std::str::from_utf8(bytes).ok().unwrap_or_default();
    form.split('&')
        .chain(query.unwrap_or_default().split('&'))
        .find_map(|pair| pair.strip_prefix("system_id=").map(str::to_string))
}

fn fault_response(status: u16) -> Response {
    let text = match status {
        500 => "500 Internal Server Error",
        502 => "502 Bad Gateway",
        503 => "503 Service Unavailable",
        504 => "504 Gateway Timeout",
        401 => "401 Unauthorized",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        _ => "error",
    };
    api::message(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        text,
    )
}

/// What of the request a fault may use.
#[derive(Clone, Default)]
struct Seen {
    query: String,
    private_token: Option<String>,
    runner_token: Option<String>,
}

/// A query parameter as a number.
fn query_number(query: &str, key: &str) -> Option<usize> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `bytes` bytes of a JSON-looking array, in 64 KiB chunks made as they are sent.
fn huge_body(bytes: u64) -> Body {
    const CHUNK: usize = 64 * 1024;
    let item = br#"{"id":1,"description":"padding"},"#;
    let chunk: axum::body::Bytes = item
        .iter()
        .copied()
        .cycle()
        .take(CHUNK)
        .collect::<Vec<u8>>()
        .into();
    let full = bytes / CHUNK as u64;
    let last = usize::try_from(bytes % CHUNK as u64).expect("below 64 KiB");
    let chunks = std::iter::repeat_n(chunk.clone(), usize::try_from(full).unwrap_or(usize::MAX))
        .chain((last > 0).then(|| chunk.slice(..last)))
        .map(Ok::<_, std::convert::Infallible>);
    Body::from_stream(futures_util::stream::iter(chunks))
}

/// Apply a fault; `None` means "answer normally".
async fn apply(kind: FaultKind, kill: Option<&KillConnection>, seen: &Seen) -> Response {
    match kind {
        FaultKind::Status(code) => fault_response(code),
        FaultKind::RateLimited { retry_after_secs } => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "Retry later\n").into_response();
            r.headers_mut()
                .insert("Retry-After", HeaderValue::from(retry_after_secs));
            r.headers_mut().insert(
                "RateLimit-Name",
                HeaderValue::from_static("throttle_authenticated_api"),
            );
            r
        }
        FaultKind::RateLimitedBare => {
            (StatusCode::TOO_MANY_REQUESTS, "Retry later\n").into_response()
        }
        FaultKind::Reset => {
            if let Some(k) = kill {
                k.0.notify_one();
            }
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        FaultKind::Hang(d) => {
            tokio::time::sleep(d).await;
            fault_response(504)
        }
        FaultKind::Body(status, body) => {
            let mut r =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            r.headers_mut()
                .insert("Content-Type", HeaderValue::from_static("application/json"));
            r
        }
        FaultKind::HugeBody {
            status,
            bytes,
            declare_length,
        } => {
            let mut r = Response::new(huge_body(bytes));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            r.headers_mut()
                .insert("Content-Type", HeaderValue::from_static("application/json"));
            if declare_length {
                r.headers_mut()
                    .insert("Content-Length", HeaderValue::from(bytes));
            }
            r
        }
        FaultKind::EndlessPages { repeat } => {
            let page = query_number(&seen.query, "page").unwrap_or(1).max(1);
            let per_page = query_number(&seen.query, "per_page")
                .unwrap_or(20)
                .clamp(1, 100);
            let first = if repeat { 1 } else { page * per_page };
            let items: Vec<serde_json::Value> = (0..per_page)
                .map(|i| {
                    serde_json::json!({
                        "id": 5_000_000 + first + i,
                        "description": "endless",
                        "runner_type": "instance_type",
                        "paused": false,
                    })
                })
                .collect();
            let mut r = (StatusCode::OK, axum::Json(items)).into_response();
            let h = r.headers_mut();
            h.insert("X-Page", HeaderValue::from(page));
            h.insert("X-Per-Page", HeaderValue::from(per_page));
            // No X-Total: GitLab leaves it out of lists longer than 10 000.
            h.insert("X-Next-Page", HeaderValue::from(page + 1));
            r
        }
        FaultKind::EchoSecrets(status) => {
            let text = format!(
                "{status} refused: PRIVATE-TOKEN={} token={} (request logged)",
                seen.private_token.as_deref().unwrap_or("-"),
                seen.runner_token.as_deref().unwrap_or("-"),
            );
            api::message(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &text,
            )
        }
    }
}

pub async fn edge(AxState(state): AxState<Shared>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |m| m.as_str().to_string(),
    );
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let host = request
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let kill = request.extensions().get::<KillConnection>().cloned();
    let private = request
        .headers()
        .get("PRIVATE-TOKEN")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            request
                .headers()
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let seen = Seen {
        query: parts.uri.query().unwrap_or_default().to_string(),
        private_token: private.clone(),
        runner_token: body_token(&bytes),
    };
    let (credential, credential_kind) = match (private, body_token(&bytes)) {
        (Some(p), _) => (Some(p), "private_token"),
        (None, Some(t)) => (Some(t), "runner_token"),
        (None, None) => (None, "none"),
    };
    let system_id = system_id(&bytes, query.as_deref());
    let request = Request::from_parts(parts, Body::from(bytes));
    let endpoint = format!("{method} {route}");

    let (latency, before, throttled) = {
        let mut s = state.lock().expect("simulator state lock");
        let now = s.now();
        let skew = s.date_skew;
        // Rack::Attack answers before the application (and before any fault).
        let throttled = s.throttle.as_mut().map(|t| {
            let (allowed, observed, reset) = t.count(now);
            (
                allowed,
                t.limit,
                observed,
                reset + skew,
                (reset - now).num_seconds().max(0),
                t.retry_after,
            )
        });
        (s.latency, s.take_fault(&endpoint, false), throttled)
    };
    let rate_headers = |r: &mut Response| {
        if let Some((_, limit, observed, reset, _, _)) = throttled {
            let h = r.headers_mut();
            h.insert(
                "RateLimit-Name",
                HeaderValue::from_static("throttle_authenticated_api"),
            );
            h.insert("RateLimit-Limit", HeaderValue::from(limit));
            h.insert("RateLimit-Observed", HeaderValue::from(observed));
            h.insert(
                "RateLimit-Remaining",
                HeaderValue::from(limit.saturating_sub(observed)),
            );
            h.insert("RateLimit-Reset", HeaderValue::from(reset.timestamp()));
            if let Ok(v) =
                HeaderValue::from_str(&reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            {
                h.insert("RateLimit-ResetTime", v);
            }
        }
    };
    if let Some((false, _, _, _, wait, retry_after)) = throttled {
        log(
            &state,
            &method,
            &route,
            &path,
            &host,
            credential.clone(),
            credential_kind,
            system_id.clone(),
            429,
        );
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "Retry later\n").into_response();
        rate_headers(&mut r);
        if retry_after {
            r.headers_mut()
                .insert("Retry-After", HeaderValue::from(wait));
        }
        let date = {
            let s = state.lock().expect("simulator state lock");
            s.now() + s.date_skew
        };
        if let Ok(v) = HeaderValue::from_str(&date.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        {
            r.headers_mut().insert("Date", v);
        }
        return r;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let record = |status: u16| {
        log(
            &state,
            &method,
            &route,
            &path,
            &host,
            credential.clone(),
            credential_kind,
            system_id.clone(),
            status,
        )
    };
    let mut response = match before {
        Some(kind) => {
            // Log before answering: a reset or hang never returns normally.
            record(fault_status(&kind));
            apply(kind, kill.as_ref(), &seen).await
        }
        None => {
            let response = next.run(request).await;
            let after = state
                .lock()
                .expect("simulator state lock")
                .take_fault(&endpoint, true);
            match after {
                Some(kind) => {
                    record(fault_status(&kind));
                    apply(kind, kill.as_ref(), &seen).await
                }
                None => {
                    record(response.status().as_u16());
                    response
                }
            }
        }
    };
    rate_headers(&mut response);
    let date = {
        let s = state.lock().expect("simulator state lock");
        s.now() + s.date_skew
    };
    let date = date.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = HeaderValue::from_str(&date) {
        response.headers_mut().insert("Date", v);
    }
    response
}

fn fault_status(kind: &FaultKind) -> u16 {
    match kind {
        FaultKind::Status(c) => *c,
        FaultKind::RateLimited { .. } | FaultKind::RateLimitedBare => 429,
        FaultKind::Reset => 0,
        FaultKind::Hang(_) => 504,
        FaultKind::Body(status, _)
        | FaultKind::HugeBody { status, .. }
        | FaultKind::EchoSecrets(status) => *status,
        FaultKind::EndlessPages { .. } => 200,
    }
}

#[allow(clippy::too_many_arguments)]
fn log(
    state: &Shared,
    method: &str,
    route: &str,
    path: &str,
    host: &str,
    credential: Option<String>,
    credential_kind: &'static str,
    system_id: Option<String>,
    status: u16,
) {
    let mut s = state.lock().expect("simulator state lock");
    let at = s.now();
    s.log.push(LogEntry {
        method: method.to_string(),
        route: route.to_string(),
        path: path.to_string(),
        credential,
        credential_kind,
        status,
        host: host.to_string(),
        system_id,
        at,
    });
}
