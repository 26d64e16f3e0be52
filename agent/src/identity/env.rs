//! Identity from a CI runner's environment variables (host-asserted).
use super::{Identity, IdentityError};

/// A source of environment variables (the process environment, or a table in tests).
pub trait Vars {
    fn var(&self, name: &str) -> Option<String>;

    fn get(&self, name: &str) -> String {
        self.var(name).unwrap_or_default()
    }
}

/// The calling process's environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Vars for [(&str, &str)] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            .filter(|value| !value.is_empty())
    }
}

/// From the `GITHUB_*` variables a GitHub Actions runner sets for its job hooks.
pub fn github(vars: &(impl Vars + ?Sized)) -> Result<Identity, IdentityError> {
    let required = |name: &'static str| vars.var(name).ok_or(IdentityError::Missing(name));
    let identity = Identity {
        provider: "github".to_owned(),
        repository: required("GITHUB_REPOSITORY")?,
        workflow: vars.get("GITHUB_WORKFLOW"),
        workflow_ref: vars.get("GITHUB_WORKFLOW_REF"),
        job: vars.get("GITHUB_JOB"),
        ci_job_id: String::new(),
        run_id: required("GITHUB_RUN_ID")?,
        run_attempt: vars
            .var("GITHUB_RUN_ATTEMPT")
            .unwrap_or_else(|| "1".to_owned()),
        git_ref: vars.get("GITHUB_REF"),
        ref_type: vars.get("GITHUB_REF_TYPE"),
        sha: vars.get("GITHUB_SHA"),
        environment: String::new(),
        actor: vars.get("GITHUB_ACTOR"),
        event: vars.get("GITHUB_EVENT_NAME"),
        runner: vars.get("RUNNER_NAME"),
    };
    identity.validate()?;
    Ok(identity)
}

/// From the `CI_*` variables GitLab Runner sets for a job.
pub fn gitlab(vars: &(impl Vars + ?Sized)) -> Result<Identity, IdentityError> {
    let required = |name: &'static str| vars.var(name).ok_or(IdentityError::Missing(name));
    let ref_type = if vars.var("CI_COMMIT_TAG").is_some() {
        "tag"
    } else if vars.var("CI_MERGE_REQUEST_IID").is_some() {
        "merge_request"
    } else {
        "branch"
    };
    let identity = Identity {
        provider: "gitlab".to_owned(),
        repository: required("CI_PROJECT_PATH")?,
        workflow: vars
            .var("CI_PIPELINE_NAME")
            .unwrap_or_else(|| vars.get("CI_CONFIG_PATH")),
        workflow_ref: String::new(),
        job: vars.get("CI_JOB_NAME"),
        ci_job_id: required("CI_JOB_ID")?,
        run_id: required("CI_PIPELINE_ID")?,
        run_attempt: String::new(),
        git_ref: vars.get("CI_COMMIT_REF_NAME"),
        ref_type: ref_type.to_owned(),
        sha: vars.get("CI_COMMIT_SHA"),
        environment: vars.get("CI_ENVIRONMENT_NAME"),
        actor: vars.get("GITLAB_USER_LOGIN"),
        event: vars.get("CI_PIPELINE_SOURCE"),
        runner: vars
            .var("CI_RUNNER_DESCRIPTION")
            .unwrap_or_else(|| vars.get("CI_RUNNER_ID")),
    };
    identity.validate()?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_variables() {
        let vars: &[(&str, &str)] = &[
            ("GITHUB_REPOSITORY", "acme/api"),
            ("GITHUB_RUN_ID", "9001"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "deploy"),
            ("GITHUB_REF", "refs/heads/main"),
            ("GITHUB_REF_TYPE", "branch"),
            ("GITHUB_ACTOR", "octocat"),
            ("GITHUB_EVENT_NAME", "push"),
            ("RUNNER_NAME", "runner-1"),
        ];
        let identity = github(vars).unwrap();
        assert_eq!(identity.provider, "github");
        assert_eq!(identity.run_attempt, "2");
        assert_eq!(identity.git_ref, "refs/heads/main");
        assert_eq!(identity.runner, "runner-1");
        assert_eq!(
            github(&vars[1..]),
            Err(IdentityError::Missing("GITHUB_REPOSITORY"))
        );
        let no_attempt: &[(&str, &str)] = &[("GITHUB_REPOSITORY", "a/b"), ("GITHUB_RUN_ID", "1")];
        assert_eq!(github(no_attempt).unwrap().run_attempt, "1");
    }

    #[test]
    fn gitlab_variables() {
        let vars: &[(&str, &str)] = &[
            ("CI_PROJECT_PATH", "acme/api"),
            ("CI_PIPELINE_ID", "77"),
            ("CI_JOB_ID", "1234"),
            ("CI_JOB_NAME", "migrate"),
            ("CI_COMMIT_REF_NAME", "v1.2"),
            ("CI_COMMIT_TAG", "v1.2"),
            ("CI_ENVIRONMENT_NAME", "production"),
            ("GITLAB_USER_LOGIN", "alice"),
        ];
        let identity = gitlab(vars).unwrap();
        assert_eq!(identity.ci_job_id, "1234");
        assert_eq!(identity.run_id, "77");
        assert_eq!(identity.ref_type, "tag");
        assert_eq!(identity.environment, "production");
        assert_eq!(gitlab(&vars[..2]), Err(IdentityError::Missing("CI_JOB_ID")));
    }
}
