//! What each job resolved: address -> the name it asked for, from the resolver's allowed
//! answers. A connect to that address is then decided and recorded with the name
//! (`resource.hostname`, and the `dns_names` of `[[targets]]`).
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::RwLock,
    time::{Duration, Instant},
};

/// A name is kept at least this long after its answer (clients cache answers).
const MIN_KEEP: Duration = Duration::from_secs(300);
/// Addresses kept per job; past this, expired entries go, then the oldest.
const PER_JOB: usize = 4096;

struct Entry {
    name: String,
    stored: Instant,
    expires: Instant,
}

#[derive(Default)]
pub struct JobNames {
    jobs: RwLock<HashMap<String, HashMap<IpAddr, Entry>>>,
}

impl JobNames {
    /// `job` resolved `name` to `addresses`, valid for `ttl` seconds.
    pub fn learn(&self, job: &str, name: &str, addresses: &[IpAddr], ttl: Option<u32>) {
        if addresses.is_empty() {
            return;
        }
        let now = Instant::now();
        let keep = Duration::from_secs(u64::from(ttl.unwrap_or(0))).max(MIN_KEEP);
        let mut jobs = self.jobs.write().unwrap_or_else(|e| e.into_inner());
        let names = jobs.entry(job.to_owned()).or_default();
        if names.len() + addresses.len() > PER_JOB {
            names.retain(|_, e| e.expires > now);
            while names.len() + addresses.len() > PER_JOB {
                let Some(oldest) = names
                    .iter()
                    .min_by_key(|(_, e)| e.stored)
                    .map(|(ip, _)| *ip)
                else {
                    break;
                };
                names.remove(&oldest);
            }
        }
        for &ip in addresses {
            names.insert(
                tollgate_policy::targets::canonical(ip),
                Entry {
                    name: name.to_owned(),
                    stored: now,
                    expires: now + keep,
                },
            );
        }
    }

    /// The name `job` last resolved `ip` from, if it is still current.
    pub fn name_of(&self, job: &str, ip: IpAddr) -> Option<String> {
        let jobs = self.jobs.read().unwrap_or_else(|e| e.into_inner());
        let entry = jobs
            .get(job)?
            .get(&tollgate_policy::targets::canonical(ip))?;
        (entry.expires > Instant::now()).then(|| entry.name.clone())
    }

    /// Forgets the jobs that are no longer active.
    pub fn retain_jobs(&self, active: &dyn Fn(&str) -> bool) {
        self.jobs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|job, _| active(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_has_its_own_names() {
        let names = JobNames::default();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        names.learn("a", "db.corp.example", &[ip], Some(60));
        assert_eq!(names.name_of("a", ip).as_deref(), Some("db.corp.example"));
        assert_eq!(
            names
                .name_of("a", "::ffff:10.0.0.5".parse().unwrap())
                .as_deref(),
            Some("db.corp.example"),
            "canonical"
        );
        assert_eq!(
            names.name_of("b", ip),
            None,
            "another job did not resolve it"
        );
        names.learn("a", "other.corp.example", &[ip], Some(60));
        assert_eq!(
            names.name_of("a", ip).as_deref(),
            Some("other.corp.example")
        );
        names.retain_jobs(&|job| job != "a");
        assert_eq!(names.name_of("a", ip), None);
    }
}
