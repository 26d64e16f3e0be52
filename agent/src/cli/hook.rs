//! `tollgate hook github|gitlab` and `tollgate attest`: the runner side of pipeline
//! identity. The hooks read the CI system's variables, fetch the job's OIDC token when the
//! job can have one, and ask the agent to enroll the runner's job.
use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::call;
use crate::{
    config::DEFAULT_AUDIENCE,
    control::{Request, Response},
    identity::{
        env::{self, ProcessEnv, Vars as _},
        oidc::fetch,
    },
    jobs::Job,
};

/// GitLab's `id_tokens` variable Tollgate reads by default.
const DEFAULT_TOKEN_ENV: &str = "TOLLGATE_ID_TOKEN";

#[derive(Subcommand)]
pub enum HookCommand {
    /// GitHub Actions runner hooks (ACTIONS_RUNNER_HOOK_JOB_STARTED / _COMPLETED).
    Github {
        #[command(subcommand)]
        event: GithubEvent,
    },
    /// GitLab Runner (shell executor) `pre_build_script`: enrolls the job's shell.
    Gitlab(TokenArgs),
}

#[derive(Subcommand)]
pub enum GithubEvent {
    /// Enroll the runner's Runner.Worker in a new job with the GITHUB_* identity.
    JobStarted(TokenArgs),
    /// End the job: kill leftover step processes, release the worker, close the record.
    JobCompleted,
}

#[derive(Args, Clone)]
pub struct TokenArgs {
    /// Audience to request the OIDC token for (must match the agent's config).
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    audience: String,
    /// Environment variable holding an OIDC token (GitLab `id_tokens`).
    #[arg(long, default_value = DEFAULT_TOKEN_ENV)]
    token_env: String,
}

#[derive(Args)]
pub struct AttestArgs {
    #[command(flatten)]
    token: TokenArgs,
}

/// The job's OIDC token: from GitHub's token endpoint when the job may request one
/// (`permissions: id-token: write`), else from `token_env`.
fn token(args: &TokenArgs) -> anyhow::Result<Option<String>> {
    let vars = ProcessEnv;
    if let (Some(url), Some(bearer)) = (
        vars.var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        vars.var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) {
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}audience={}", encode(&args.audience));
        let body = fetch::get(&url, Some(&bearer))?;
        let value: serde_json::Value =
            serde_json::from_str(&body).context("the token endpoint's reply is not JSON")?;
        let token = value
            .get("value")
            .and_then(serde_json::Value::as_str)
            .context("the token endpoint's reply has no `value`")?;
        return Ok(Some(token.to_owned()));
    }
    Ok(vars.var(&args.token_env))
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Fetches the token for a hook; a failure is reported and the job is enrolled
/// host-asserted.
fn hook_token(args: &TokenArgs) -> Option<String> {
    match token(args) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("tollgate: warning: no OIDC token, enrolling host-asserted: {error:#}");
            None
        }
    }
}

fn report(job: &Job, attest_error: Option<&str>) {
    eprintln!(
        "tollgate: job {} enrolled: {} ({})",
        job.id,
        job.identity.summary(),
        job.assurance.as_str()
    );
    if let Some(error) = attest_error {
        eprintln!("tollgate: warning: identity stays host-asserted: {error}");
    }
}

pub fn hook(socket: &Path, command: HookCommand) -> anyhow::Result<ExitCode> {
    let request = match &command {
        HookCommand::Github {
            event: GithubEvent::JobStarted(args),
        } => Request::GithubJobStarted {
            identity: env::github(&ProcessEnv)?,
            token: hook_token(args),
        },
        HookCommand::Github {
            event: GithubEvent::JobCompleted,
        } => Request::GithubJobCompleted {},
        HookCommand::Gitlab(args) => Request::GitlabJobStarted {
            identity: env::gitlab(&ProcessEnv)?,
            token: hook_token(args),
        },
    };
    match call(socket, &request)? {
        Response::Enrolled { job, attest_error } => report(&job, attest_error.as_deref()),
        Response::Job(job) => eprintln!("tollgate: job {} ended", job.id),
        Response::Error { message } => bail!("{message}"),
        _ => bail!("unexpected reply"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn attest(socket: &Path, args: &AttestArgs) -> anyhow::Result<ExitCode> {
    let Some(token) = token(&args.token)? else {
        bail!(
            "no OIDC token: on GitHub give the job `permissions: id-token: write`; on GitLab \
             declare `id_tokens: {}: {{aud: {}}}`",
            args.token.token_env,
            args.token.audience
        );
    };
    match call(socket, &Request::Attest { token })? {
        Response::Job(job) => {
            eprintln!(
                "tollgate: job {} is {}: {}",
                job.id,
                job.assurance.as_str(),
                job.identity.summary()
            );
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        _ => bail!("unexpected reply"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_query_values() {
        assert_eq!(super::encode("tollgate"), "tollgate");
        assert_eq!(super::encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
