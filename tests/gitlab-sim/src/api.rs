//! The HTTP handlers, one per endpoint, answering as GitLab does (reference §2–§4).

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::state::{Pat, Runner, RunnerType, State};

pub type Shared = Arc<Mutex<State>>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v4/runners/verify", post(verify))
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(self_reset),
        )
        .route("/api/v4/runners", axum::routing::delete(unregister))
        .route("/api/v4/jobs/request", post(jobs_request))
        .route("/api/v4/user/runners", post(create_runner))
        .route("/api/v4/runners/all", get(list_all))
        .route("/api/v4/groups/:id/runners", get(group_runners))
        .route(
            "/api/v4/projects/:id/runners",
            get(project_runners).post(assign_to_project),
        )
        .route(
            "/api/v4/runners/:id",
            get(get_runner).put(update_runner).delete(delete_runner),
        )
        .route(
            "/api/v4/runners/:id/reset_authentication_token",
            post(reset_by_id),
        )
        .route("/api/v4/runners/:id/managers", get(list_managers))
        .route("/api/v4/personal_access_tokens/self", get(pat_self))
        .route("/api/v4/application/settings", get(app_settings))
        .route("/api/v4/version", get(version))
        // GitLab serves the runner API under `/api/v4` only; the `/ci` prefix belonged to the CI
        // API v1 (`/ci/api/v1`) that GitLab 9.0 replaced. gitlab-runner strips a trailing `/ci`
        // from a runner's `url` (`fixCIURL`, gitlab-org/gitlab-runner `network/client.go`), so a
        // client that does not answers 404 here. Routed (not the fallback) so the log shows it.
        .route("/ci/api/v4/*rest", axum::routing::any(ci_prefixed))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::server::edge,
        ))
        .fallback(|| async { message(StatusCode::NOT_FOUND, "404 Not Found") })
        .with_state(state)
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().expect("simulator state lock")
}

pub fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

fn forbidden() -> Response {
    message(StatusCode::FORBIDDEN, "403 Forbidden")
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn body_str<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

fn parse_body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

async fn ci_prefixed() -> Response {
    message(StatusCode::NOT_FOUND, "404 Not Found")
}

// ---- runner-token endpoints (§2) ----

/// The refusal of an orphaned runner's call (see `State::reject_orphaned_runners`).
/// `creates_manager`: the endpoint creates the runner manager (verify, jobs/request), which is
/// where GitLab fails with 422 when the flag is off.
fn orphan_refusal(s: &State, id: u64, creates_manager: bool) -> Option<Response> {
    if !s.orphaned.contains(&id) {
        return None;
    }
    if s.reject_orphaned_runners {
        Some(message(
            StatusCode::FORBIDDEN,
            "403 Forbidden - Runner is orphaned",
        ))
    } else if creates_manager {
        Some(message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Runner is orphaned",
        ))
    } else {
        None
    }
}

async fn verify(AxState(state): AxState<Shared>, body: axum::body::Bytes) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let Some(token) = body_str(&body, "token") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "token is missing"})),
        )
            .into_response();
    };
    let Some(id) = s.runner_by_token(token) else {
        return forbidden();
    };
    if let Some(refusal) = orphan_refusal(&s, id, true) {
        return refusal;
    }
    let now = s.now();
    // verify authenticates the runner (`authenticate_runner!`), which ensures the runner manager
    // of the `system_id` sent, `<legacy>` without one, and heartbeats it (§2.1).
    s.touch_manager(id, body_str(&body, "system_id"));
    let r = s.runners.get_mut(&id).expect("found above");
    // verify counts as a heartbeat (§2.1).
    r.contacted_at = Some(now);
    (
        StatusCode::OK,
        Json(json!({
            "id": r.id,
            "token": r.token,
            "token_expires_at": r.token_expires_at.map(iso),
        })),
    )
        .into_response()
}

async fn self_reset(AxState(state): AxState<Shared>, body: axum::body::Bytes) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let Some(id) = body_str(&body, "token").and_then(|t| s.runner_by_token(t)) else {
        return forbidden();
    };
    if let Some(refusal) = orphan_refusal(&s, id, false) {
        return refusal;
    }
    let (token, expires) = s.reset_token(id).expect("runner exists");
    token_result(&token, expires)
}

/// `ResetTokenResult`: `token_expires_at` only when the token expires (§2.2).
fn token_result(token: &str, expires: Option<DateTime<Utc>>) -> Response {
    let mut body = json!({ "token": token });
    if let Some(at) = expires {
        body["token_expires_at"] = json!(iso(at));
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn unregister(AxState(state): AxState<Shared>, body: axum::body::Bytes) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let Some(id) = body_str(&body, "token").and_then(|t| s.runner_by_token(t)) else {
        return forbidden();
    };
    s.runners.remove(&id);
    s.managers.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn jobs_request(AxState(state): AxState<Shared>, body: axum::body::Bytes) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let Some(id) = body_str(&body, "token").and_then(|t| s.runner_by_token(t)) else {
        return forbidden();
    };
    if let Some(refusal) = orphan_refusal(&s, id, true) {
        return refusal;
    }
    let now = s.now();
    // As verify: `authenticate_runner!` ensures and heartbeats the manager (§2.3).
    s.touch_manager(id, body_str(&body, "system_id"));
    if let Some(r) = s.runners.get_mut(&id) {
        r.contacted_at = Some(now);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("X-GitLab-Last-Update", HeaderValue::from_static("0"));
    response
}

// ---- privileged endpoints (§3) ----

/// Authenticate `PRIVATE-TOKEN` (or `Authorization: Bearer`) and check the scope for this
/// route (§3 "Scopes", §4.1 bodies).
// A `Response` is the natural error of a handler helper; boxing it would only add noise.
#[allow(clippy::result_large_err)]
fn authenticate(
    s: &State,
    headers: &HeaderMap,
    method: &str,
    route: &str,
) -> Result<Pat, Response> {
    let presented = headers
        .get("PRIVATE-TOKEN")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let unauthorized = || message(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    let Some(presented) = presented else {
        return Err(unauthorized());
    };
    let Some(pat) = s.pats.iter().find(|p| p.token == presented) else {
        return Err(unauthorized());
    };
    if pat.revoked {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token", "error_description": "Token was revoked. You have to re-authorize from the user."})),
        )
            .into_response());
    }
    if pat.expires_at.is_some_and(|d| d <= s.now().date_naive()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token", "error_description": "Token is expired. You can either do re-authorization or token refresh."})),
        )
            .into_response());
    }
    let any_scope = matches!(
        route,
        "/api/v4/personal_access_tokens/self" | "/api/v4/version"
    );
    let allowed = any_scope
        || pat.scopes.iter().any(|scope| match scope.as_str() {
            "api" => true,
            "read_api" => method == "GET",
            "create_runner" => method == "POST" && route == "/api/v4/user/runners",
            "manage_runner" => route.starts_with("/api/v4/runners/:id"),
            _ => false,
        });
    if !allowed {
        return Err((
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": "api manage_runner create_runner",
            })),
        )
            .into_response());
    }
    Ok(pat.clone())
}

/// The token acts as an administrator: its user is one and, when Admin Mode is on, the token has
/// the `admin_mode` scope (see `State::admin_mode`).
fn is_admin(s: &State, pat: &Pat) -> bool {
    pat.admin && (!s.admin_mode || pat.scopes.iter().any(|x| x == "admin_mode"))
}

/// `can?(user, :update_runner, runner)` (GitLab `app/policies/ci/runner_policy.rb`): an
/// administrator; the Owner of a group runner's group; a Maintainer of one of a project runner's
/// projects. Instance runners: administrators only.
fn may_update(s: &State, pat: &Pat, r: &Runner) -> bool {
    if is_admin(s, pat) {
        return true;
    }
    match r.runner_type {
        RunnerType::InstanceType => false,
        RunnerType::GroupType => r.group_id.is_some_and(|g| pat.groups.contains(&g)),
        RunnerType::ProjectType => s
            .runner_projects(r.id)
            .iter()
            .any(|p| pat.projects.contains(p)),
    }
}

fn no_access() -> Response {
    message(StatusCode::FORBIDDEN, "403 Forbidden - No access granted")
}

/// The runner entity of `GET /runners/:id` and friends; `token_expiry` adds `token_expires_at`
/// as newer GitLab does (see `State::record_has_token_expiry`).
fn details(r: &Runner, now: DateTime<Utc>, token_expiry: bool) -> Value {
    let online = r.contacted_at.map(|c| now - c < chrono::Duration::hours(2));
    let status = if r.contacted_at.is_none() {
        "never_contacted"
    } else if r.paused {
        "paused"
    } else if online == Some(true) {
        "online"
    } else {
        "offline"
    };
    let mut v = json!({
        "id": r.id,
        "description": r.description,
        "ip_address": null,
        "active": !r.paused,
        "paused": r.paused,
        "is_shared": r.runner_type == RunnerType::InstanceType,
        "runner_type": r.runner_type,
        "name": null,
        "online": online,
        "status": status,
        "tag_list": r.tag_list,
        "run_untagged": r.run_untagged,
        "locked": r.locked,
        "access_level": r.access_level,
        "maximum_timeout": r.maximum_timeout,
        "maintenance_note": r.maintenance_note,
        "contacted_at": r.contacted_at.map(iso),
        "version": null,
        "projects": [],
        "groups": [],
    });
    if let Some(p) = r.project_id {
        let all: Vec<Value> = std::iter::once(p)
            .chain(r.more_projects.iter().copied())
            .map(|id| json!({ "id": id }))
            .collect();
        v["projects"] = Value::Array(all);
    }
    if let Some(g) = r.group_id {
        v["groups"] = json!([{ "id": g }]);
    }
    if token_expiry {
        v["token_expires_at"] = json!(r.token_expires_at.map(iso));
    }
    v
}

async fn create_runner(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let pat = match authenticate(&s, &headers, "POST", "/api/v4/user/runners") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(kind) = body_str(&body, "runner_type") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "runner_type is missing"})),
        )
            .into_response();
    };
    let Some(runner_type) = RunnerType::parse(kind) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "runner_type does not have a valid value"})),
        )
            .into_response();
    };
    let group_id = body.get("group_id").and_then(Value::as_u64);
    let project_id = body.get("project_id").and_then(Value::as_u64);
    // `Ci::Runners::CreateRunnerService` (GitLab `app/services/ci/runners/create_runner_service.rb`,
    // `runner_creation_strategies/*`): `create_runner` permission on the instance (administrators),
    // the group (Owners) or the project (Maintainers and up).
    let admin = is_admin(&s, &pat);
    let allowed = match runner_type {
        RunnerType::InstanceType => admin,
        RunnerType::GroupType => admin || group_id.is_some_and(|g| pat.groups.contains(&g)),
        RunnerType::ProjectType => admin || project_id.is_some_and(|p| pat.projects.contains(&p)),
    };
    let target_given = match runner_type {
        RunnerType::InstanceType => true,
        RunnerType::GroupType => group_id.is_some(),
        RunnerType::ProjectType => project_id.is_some(),
    };
    if target_given && !allowed {
        return message(
            StatusCode::FORBIDDEN,
            "403 Forbidden - Insufficient permissions",
        );
    }
    match runner_type {
        RunnerType::GroupType if group_id.is_none() => {
            return message(
                StatusCode::BAD_REQUEST,
                "400 Bad request - group_id is required",
            )
        }
        RunnerType::ProjectType if project_id.is_none() => {
            return message(
                StatusCode::BAD_REQUEST,
                "400 Bad request - project_id is required",
            )
        }
        _ => {}
    }
    let maximum_timeout = body.get("maximum_timeout").and_then(Value::as_u64);
    if maximum_timeout.is_some_and(|t| t < 600) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": {"maximum_timeout": ["needs to be at least 10 minutes"]}})),
        )
            .into_response();
    }
    let note = body_str(&body, "maintenance_note").map(str::to_string);
    if note.as_ref().is_some_and(|n| n.chars().count() > 1024) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": {"maintenance_note": ["is too long (maximum is 1024 characters)"]}})),
        )
            .into_response();
    }
    let tag_list = match body.get("tag_list") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => vec![],
    };
    let id = s.next_runner_id();
    let token = s.generate_runner_token(runner_type);
    let expires = s.compute_token_expiration(runner_type);
    let now = s.now();
    s.runners.insert(
        id,
        Runner {
            id,
            runner_type,
            group_id,
            project_id,
            more_projects: Vec::new(),
            description: body_str(&body, "description")
                .unwrap_or_default()
                .to_string(),
            tag_list,
            run_untagged: body
                .get("run_untagged")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            locked: body.get("locked").and_then(Value::as_bool).unwrap_or(false),
            access_level: body_str(&body, "access_level")
                .unwrap_or("not_protected")
                .to_string(),
            maximum_timeout,
            paused: body.get("paused").and_then(Value::as_bool).unwrap_or(false),
            maintenance_note: note,
            token: token.clone(),
            token_expires_at: expires,
            contacted_at: None,
            created_at: now,
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "token": token, "token_expires_at": expires.map(iso) })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

async fn list_all(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/runners/all") {
        Ok(p) => p,
        Err(r) => return r,
    };
    // `authenticated_as_admin!` (GitLab `lib/api/ci/runners.rb`).
    if !is_admin(&s, &pat) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    list(&s, s.runners.values().collect(), &q)
}

/// `GET /groups/:id/runners`: `Ci::Runner.group_or_instance_wide(group)`, for users who may read
/// the group's runners (GitLab `lib/api/ci/runners.rb`; ancestor groups are not modelled).
async fn group_runners(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(group): Path<u64>,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/groups/:id/runners") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !is_admin(&s, &pat) && !pat.groups.contains(&group) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let runners = s
        .runners
        .values()
        .filter(|r| r.runner_type == RunnerType::InstanceType || r.group_id == Some(group))
        .collect();
    list(&s, runners, &q)
}

/// `GET /projects/:id/runners`: `Ci::Runner.owned_or_instance_wide(project)` (its project
/// runners and the instance runners; group runners of its groups are not modelled).
async fn project_runners(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(project): Path<u64>,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/projects/:id/runners") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !is_admin(&s, &pat) && !pat.projects.contains(&project) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let runners = s
        .runners
        .values()
        .filter(|r| {
            r.runner_type == RunnerType::InstanceType || s.runner_projects(r.id).contains(&project)
        })
        .collect();
    list(&s, runners, &q)
}

/// `POST /projects/:id/runners` with `runner_id`: assign a project runner to one more project
/// (GitLab `lib/api/ci/runners.rb` "Assign a runner to project", `authenticate_enable_runner!`,
/// `Ci::Runners::AssignRunnerService`). The token needs `api`: `manage_runner` covers only
/// `/runners/:id…` paths.
async fn assign_to_project(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(project): Path<u64>,
    body: axum::body::Bytes,
) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let pat = match authenticate(&s, &headers, "POST", "/api/v4/projects/:id/runners") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let admin = is_admin(&s, &pat);
    if !admin && !pat.projects.contains(&project) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let Some(id) = body.get("runner_id").and_then(Value::as_u64) else {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - runner_id is missing",
        );
    };
    let Some(runner) = s.runners.get(&id).cloned() else {
        return message(StatusCode::NOT_FOUND, "404 Runner Not Found");
    };
    if runner.runner_type == RunnerType::GroupType {
        return message(
            StatusCode::FORBIDDEN,
            "403 Forbidden - Runner is a group runner",
        );
    }
    if !admin && runner.locked {
        return message(StatusCode::FORBIDDEN, "403 Forbidden - Runner is locked");
    }
    if !may_update(&s, &pat, &runner) {
        return no_access();
    }
    if runner.runner_type != RunnerType::ProjectType || s.runner_projects(id).contains(&project) {
        // `assign_to` fails validation [inferred wording].
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - Runner has already been taken",
        );
    }
    let now = s.now();
    let r = s.runners.get_mut(&id).expect("found above");
    r.more_projects.push(project);
    (StatusCode::CREATED, Json(summary(r, now))).into_response()
}

/// The base runner entity of the lists (§3.3).
fn summary(r: &Runner, now: DateTime<Utc>) -> Value {
    let mut d = details(r, now, false);
    let keep = [
        "id",
        "description",
        "ip_address",
        "active",
        "paused",
        "is_shared",
        "runner_type",
        "name",
        "online",
        "status",
    ];
    d.as_object_mut()
        .expect("object")
        .retain(|k, _| keep.contains(&k.as_str()));
    d
}

/// One page of `runners` (filtered by `type`), with GitLab's pagination headers.
fn list(s: &State, runners: Vec<&Runner>, q: &ListQuery) -> Response {
    let now = s.now();
    let all: Vec<Value> = runners
        .into_iter()
        .filter(|r| {
            q.kind
                .as_deref()
                .is_none_or(|k| RunnerType::parse(k) == Some(r.runner_type))
        })
        .map(|r| summary(r, now))
        .collect();
    let per_page = q.per_page.unwrap_or(20).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let total = all.len();
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut response = (StatusCode::OK, Json(Value::Array(items))).into_response();
    let h = response.headers_mut();
    h.insert("X-Total", HeaderValue::from(total));
    h.insert("X-Page", HeaderValue::from(page));
    h.insert("X-Per-Page", HeaderValue::from(per_page));
    let next = if page * per_page < total {
        (page + 1).to_string()
    } else {
        String::new()
    };
    h.insert("X-Next-Page", HeaderValue::from_str(&next).expect("digits"));
    response
}

async fn get_runner(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/runners/:id") {
        Ok(p) => p,
        Err(r) => return r,
    };
    match s.runners.get(&id) {
        // `authenticate_show_runner!`: instance runners for anyone; others for those who may
        // manage them (Maintainer and up; simplified to `may_update`).
        Some(r) if r.runner_type != RunnerType::InstanceType && !may_update(&s, &pat, r) => {
            no_access()
        }
        Some(r) => (
            StatusCode::OK,
            Json(details(r, s.now(), s.record_has_token_expiry)),
        )
            .into_response(),
        None => message(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

async fn update_runner(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Response {
    let body = parse_body(&body);
    let mut s = lock(&state);
    let pat = match authenticate(&s, &headers, "PUT", "/api/v4/runners/:id") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if s.runners.get(&id).is_some_and(|r| !may_update(&s, &pat, r)) {
        return no_access();
    }
    let now = s.now();
    let token_expiry = s.record_has_token_expiry;
    let Some(r) = s.runners.get_mut(&id) else {
        return message(StatusCode::NOT_FOUND, "404 Runner Not Found");
    };
    if let Some(v) = body_str(&body, "description") {
        r.description = v.to_string();
    }
    if let Some(v) = body.get("paused").and_then(Value::as_bool) {
        r.paused = v;
    }
    if let Some(v) = body_str(&body, "maintenance_note") {
        r.maintenance_note = Some(v.to_string());
    }
    if let Some(Value::Array(a)) = body.get("tag_list") {
        r.tag_list = a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    (StatusCode::OK, Json(details(r, now, token_expiry))).into_response()
}

async fn delete_runner(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let mut s = lock(&state);
    let pat = match authenticate(&s, &headers, "DELETE", "/api/v4/runners/:id") {
        Ok(p) => p,
        Err(r) => return r,
    };
    // `authenticate_delete_runner!`.
    if let Some(r) = s.runners.get(&id) {
        if !is_admin(&s, &pat) && s.runner_projects(id).len() > 1 {
            return message(
                StatusCode::FORBIDDEN,
                "403 Forbidden - Runner associated with more than one project",
            );
        }
        if !may_update(&s, &pat, r) {
            return no_access();
        }
    }
    match s.runners.remove(&id) {
        Some(_) => {
            // Deleting a runner deletes all of its managers (§3.5).
            s.managers.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        None => message(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

/// `GET /runners/:id/managers` (§3.7): `get ':id/managers'` in gitlab-org/gitlab
/// `lib/api/ci/runners.rb` finds the runner (404 `Runner Not Found`), checks
/// `authenticate_show_runner!` (instance runners: any user; others: `read_runner`, which the
/// simulator, having no memberships, grants to every token as `GET /runners/:id` does) and
/// presents `runner.runner_managers` with `Entities::Ci::RunnerManager`.
async fn list_managers(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let s = lock(&state);
    if !s.managers_endpoint {
        // An instance older than the endpoint: Grape's own 404 for an unknown route.
        return message(StatusCode::NOT_FOUND, "404 Not Found");
    }
    if let Err(r) = authenticate(&s, &headers, "GET", "/api/v4/runners/:id/managers") {
        return r;
    }
    if !s.runners.contains_key(&id) {
        return message(StatusCode::NOT_FOUND, "404 Runner Not Found");
    }
    let now = s.now();
    let list: Vec<Value> = s
        .managers
        .get(&id)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            // `Ci::HasRunnerStatus`: online within 2 hours of contact; stale when neither created
            // nor contacted for 7 days (`STALE_TIMEOUT`, app/models/ci/runner_manager.rb).
            let stale_at = now - chrono::Duration::days(7);
            let status = match m.contacted_at {
                _ if m.created_at <= stale_at && m.contacted_at.is_none_or(|c| c <= stale_at) => {
                    "stale"
                }
                None => "never_contacted",
                Some(c) if now - c < chrono::Duration::hours(2) => "online",
                Some(_) => "offline",
            };
            json!({
                "id": m.id,
                "system_id": m.system_id,
                "version": "18.6.0",
                "revision": "6d2ec1f1",
                "platform": "linux",
                "architecture": "amd64",
                "created_at": iso(m.created_at),
                "contacted_at": m.contacted_at.map(iso),
                "ip_address": "127.0.0.1",
                "status": status,
                "job_execution_status": "idle",
            })
        })
        .collect();
    (StatusCode::OK, Json(Value::Array(list))).into_response()
}

async fn reset_by_id(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let mut s = lock(&state);
    let pat = match authenticate(
        &s,
        &headers,
        "POST",
        "/api/v4/runners/:id/reset_authentication_token",
    ) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // `authenticate_update_runner!`.
    if s.runners.get(&id).is_some_and(|r| !may_update(&s, &pat, r)) {
        return no_access();
    }
    match s.reset_token(id) {
        Some((token, expires)) => token_result(&token, expires),
        None => message(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

async fn pat_self(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/personal_access_tokens/self") {
        Ok(p) => p,
        Err(r) => return r,
    };
    (
        StatusCode::OK,
        Json(json!({
            "id": pat.id,
            "name": pat.name,
            "revoked": false,
            "created_at": "2026-01-01T00:00:00.000Z",
            "description": null,
            "scopes": pat.scopes,
            "user_id": 1,
            "last_used_at": iso(s.now()),
            "active": true,
            "expires_at": pat.expires_at.map(|d| d.format("%Y-%m-%d").to_string()),
        })),
    )
        .into_response()
}

async fn app_settings(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    let pat = match authenticate(&s, &headers, "GET", "/api/v4/application/settings") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !is_admin(&s, &pat) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    (
        StatusCode::OK,
        Json(serde_json::to_value(&s.settings).expect("serialisable")),
    )
        .into_response()
}

async fn version(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    if let Err(r) = authenticate(&s, &headers, "GET", "/api/v4/version") {
        return r;
    }
    (
        StatusCode::OK,
        Json(json!({"version": s.version, "revision": "6d2ec1f1"})),
    )
        .into_response()
}
