//! The calls: [`RunnerApi`] with a runner's own token, [`AdminApi`] with the privileged one.

use std::collections::HashSet;
use std::fmt::Write as _;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use url::Url;

use super::api::{
    AppSettings, CreateRunner, PatInfo, RawGrant, RawVerified, RunnerDetails, RunnerManagerInfo,
    RunnerSummary, TokenGrant, Verified,
};
use super::error::Error;
use super::http::{server_text, AdminCredential, ClientOptions, Http, Reply, MAX_PAGES, PER_PAGE};
use super::retry::Idempotency;
use crate::secret::{AdminToken, RunnerToken};

fn grant(raw: RawGrant) -> TokenGrant {
    TokenGrant {
        id: raw.id,
        token: RunnerToken::new(raw.token),
        token_expires_at: raw.token_expires_at,
    }
}

/// Calls authenticated by a runner's own token, to that runner's `url`.
pub struct RunnerApi {
    http: Http,
}

impl RunnerApi {
    pub fn new(url: &Url, opts: ClientOptions) -> Result<Self, Error> {
        Ok(Self {
            http: Http::new(url, opts)?,
        })
    }

    fn token_body(&self, token: &RunnerToken) -> Value {
        let mut body = json!({ "token": token.expose_secret() });
        if let Some(id) = &self.http.opts.system_id {
            body["system_id"] = json!(id);
        }
        body
    }

    /// `POST /runners/verify` (§2.1). Never rotates the token.
    pub async fn verify(&self, token: &RunnerToken) -> Result<Reply<Verified>, Error> {
        let answer = self
            .http
            .send(
                Method::POST,
                "api/v4/runners/verify",
                None,
                Some(self.token_body(token)),
                Idempotency::Safe,
            )
            .await?;
        // GitLab before 15.10 answers a plain-text `200` (§2.1).
        let value = match serde_json::from_str::<RawVerified>(&answer.text) {
            Ok(v) => Verified {
                id: v.id,
                token_expires_at: v.token_expires_at,
            },
            Err(_) => Verified {
                id: None,
                token_expires_at: None,
            },
        };
        Ok(Reply {
            value,
            server_date: answer.date,
        })
    }

    /// `POST /runners/reset_authentication_token` with the current, still valid token (§2.2).
    pub async fn reset_own_token(&self, token: &RunnerToken) -> Result<Reply<TokenGrant>, Error> {
        let reply: Reply<RawGrant> = self
            .http
            .call(
                Method::POST,
                "api/v4/runners/reset_authentication_token",
                None,
                Some(json!({"token": token.expose_secret()})),
                Idempotency::Unsafe,
            )
            .await?;
        Ok(Reply {
            value: grant(reply.value),
            server_date: reply.server_date,
        })
    }

    /// `POST /jobs/request`: 204 means the runner would be given work (§2.3). Only the client
    /// tests call it (the stand-in runner has its own client); rotate verifies with `verify`.
    pub async fn request_job(&self, token: &RunnerToken) -> Result<u16, Error> {
        let answer = self
            .http
            .send(
                Method::POST,
                "api/v4/jobs/request",
                None,
                Some(self.token_body(token)),
                Idempotency::Safe,
            )
            .await?;
        Ok(answer.status.as_u16())
    }

    /// `DELETE /runners` with the runner's token: deletes the runner record (§2.4).
    pub async fn unregister(&self, token: &RunnerToken) -> Result<(), Error> {
        self.http
            .send(
                Method::DELETE,
                "api/v4/runners",
                None,
                Some(json!({"token": token.expose_secret()})),
                Idempotency::Safe,
            )
            .await
            .map(|_| ())
    }
}

/// Calls authenticated by the privileged token, only ever to the credential's own URL.
pub struct AdminApi {
    http: Http,
    token: AdminToken,
    url: Url,
}

impl AdminApi {
    pub fn new(credential: &AdminCredential, opts: ClientOptions) -> Result<Self, Error> {
        Ok(Self {
            http: Http::new(&credential.url, opts)?,
            token: credential.token.clone(),
            url: credential.url.clone(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, Error> {
        self.http
            .call(
                Method::GET,
                path,
                Some(&self.token),
                None,
                Idempotency::Safe,
            )
            .await
    }

    pub async fn version(&self) -> Result<Reply<Value>, Error> {
        self.get("api/v4/version").await
    }

    pub async fn pat_self(&self) -> Result<Reply<PatInfo>, Error> {
        self.get("api/v4/personal_access_tokens/self").await
    }

    pub async fn application_settings(&self) -> Result<Reply<AppSettings>, Error> {
        self.get("api/v4/application/settings").await
    }

    pub async fn runner(&self, id: u64) -> Result<Reply<RunnerDetails>, Error> {
        self.get(&format!("api/v4/runners/{id}")).await
    }

    /// `GET /runners/:id/managers` (§3.7, GitLab ~17.1): the hosts that use the runner's token.
    /// Not paginated (`present runner.runner_managers` in gitlab-org/gitlab
    /// `lib/api/ci/runners.rb`). An older instance answers 404.
    pub async fn runner_managers(&self, id: u64) -> Result<Reply<Vec<RunnerManagerInfo>>, Error> {
        self.get(&format!("api/v4/runners/{id}/managers")).await
    }

    /// `GET /runners/all`, every page, optionally of one type. Follows `X-Next-Page` (or, where
    /// a proxy dropped it, full pages) for at most [`MAX_PAGES`] pages, and stops with
    /// [`Error::Pagination`] at a page that only repeats runners already listed or that points
    /// anywhere but the page after it.
    pub async fn all_runners(
        &self,
        runner_type: Option<&str>,
    ) -> Result<Vec<RunnerSummary>, Error> {
        self.list_runners("api/v4/runners/all", runner_type).await
    }

    /// `GET /groups/:id/runners`: the group's runners and the instance runners, for the group's
    /// Owners too (GitLab `lib/api/ci/runners.rb`, `group_or_instance_wide`).
    pub async fn group_runners(
        &self,
        group: u64,
        runner_type: Option<&str>,
    ) -> Result<Vec<RunnerSummary>, Error> {
        self.list_runners(&format!("api/v4/groups/{group}/runners"), runner_type)
            .await
    }

    /// `GET /projects/:id/runners`: the project's runners and the instance runners, for its
    /// Maintainers too (`owned_or_instance_wide`).
    pub async fn project_runners(
        &self,
        project: u64,
        runner_type: Option<&str>,
    ) -> Result<Vec<RunnerSummary>, Error> {
        self.list_runners(&format!("api/v4/projects/{project}/runners"), runner_type)
            .await
    }

    /// `POST /projects/:id/runners`: assign a project runner to one more project (needs the
    /// `api` scope).
    pub async fn assign_to_project(&self, project: u64, runner: u64) -> Result<(), Error> {
        self.http
            .send(
                Method::POST,
                &format!("api/v4/projects/{project}/runners"),
                Some(&self.token),
                Some(json!({ "runner_id": runner })),
                Idempotency::Safe,
            )
            .await
            .map(|_| ())
    }

    async fn list_runners(
        &self,
        base: &str,
        runner_type: Option<&str>,
    ) -> Result<Vec<RunnerSummary>, Error> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let list = self.http.shown(base);
        let fail = |reason: String| Error::Pagination {
            url: list.clone(),
            reason,
        };
        for page in 1..=MAX_PAGES {
            let mut path = format!("{base}?per_page={PER_PAGE}&page={page}");
            if let Some(t) = runner_type {
                let _ = write!(path, "&type={t}");
            }
            let answer = self
                .http
                .send(
                    Method::GET,
                    &path,
                    Some(&self.token),
                    None,
                    Idempotency::Safe,
                )
                .await?;
            let items: Vec<RunnerSummary> = self.http.parse(&path, &answer.text)?;
            if items.is_empty() {
                return Ok(out);
            }
            let full = items.len() >= PER_PAGE;
            let new = items.iter().filter(|r| !seen.contains(&r.id)).count();
            if new == 0 {
                return Err(fail(format!(
                    "page {page} lists only runners earlier pages already listed (a proxy that \
                     ignores `?page=` answers like this)"
                )));
            }
            seen.extend(items.iter().map(|r| r.id));
            out.extend(items);
            match answer.next_page.as_deref().map(str::trim) {
                Some("") => return Ok(out),
                Some(next) if next.parse::<u32>().ok() == Some(page + 1) => {}
                Some(next) => {
                    return Err(fail(format!(
                        "page {page} names `{}` as the next page instead of {}",
                        server_text(next, &[self.token.expose_secret()]),
                        page + 1
                    )))
                }
                None if !full => return Ok(out),
                None => {}
            }
        }
        Err(fail(format!(
            "it still announced a next page after {MAX_PAGES} pages of {PER_PAGE} runners, more \
             than any instance has"
        )))
    }

    pub async fn update_runner(
        &self,
        id: u64,
        fields: Value,
    ) -> Result<Reply<RunnerDetails>, Error> {
        self.http
            .call(
                Method::PUT,
                &format!("api/v4/runners/{id}"),
                Some(&self.token),
                Some(fields),
                Idempotency::Safe,
            )
            .await
    }

    pub async fn delete_runner(&self, id: u64) -> Result<(), Error> {
        self.http
            .send(
                Method::DELETE,
                &format!("api/v4/runners/{id}"),
                Some(&self.token),
                None,
                Idempotency::Safe,
            )
            .await
            .map(|_| ())
    }

    /// `POST /runners/:id/reset_authentication_token`: works whatever state the token is in (§3.6).
    pub async fn reset_token(&self, id: u64) -> Result<Reply<TokenGrant>, Error> {
        let reply: Reply<RawGrant> = self
            .http
            .call(
                Method::POST,
                &format!("api/v4/runners/{id}/reset_authentication_token"),
                Some(&self.token),
                None,
                Idempotency::Safe,
            )
            .await?;
        Ok(Reply {
            value: grant(reply.value),
            server_date: reply.server_date,
        })
    }

    /// `POST /user/runners` (§3.1). Never retried after an uncertain outcome; rotate looks for
    /// the creation by its `maintenance_note` tag first.
    pub async fn create_runner(&self, params: &CreateRunner) -> Result<Reply<TokenGrant>, Error> {
        let mut body = serde_json::to_value(params).map_err(|e| Error::Setup(e.to_string()))?;
        if let Some(map) = body.as_object_mut() {
            map.remove("more_project_ids");
        }
        let reply: Reply<RawGrant> = self
            .http
            .call(
                Method::POST,
                "api/v4/user/runners",
                Some(&self.token),
                Some(body),
                Idempotency::Unsafe,
            )
            .await?;
        Ok(Reply {
            value: grant(reply.value),
            server_date: reply.server_date,
        })
    }
}
