//! Which decisions the kernel can enforce on its own: a connect decision is final at
//! connect time when it depends on nothing the kernel does not see there (the job's
//! cgroup, uid, gid, comm and the destination address and port). A policy that reads
//! `principal.process.exe`, `resource.hostname` or `context.sni` needs the proxy for
//! every connect.
use serde_json::Value;

use crate::load::PolicyBundle;

/// Attributes the kernel does not see at connect time.
const KERNEL_BLIND: [(&str, &str); 3] = [
    ("exe", "principal.process.exe"),
    ("hostname", "resource.hostname"),
    ("sni", "context.sni"),
];

impl PolicyBundle {
    /// The first policy that reads a fact the kernel cannot see at connect time, with
    /// what it reads, or `None` when every decision is final in the kernel.
    pub fn kernel_blind_read(&self) -> Option<(String, &'static str)> {
        self.set.policies().find_map(|policy| {
            let json = policy.to_json().ok()?;
            let (_, what) = first_read(&json, &|attr| {
                KERNEL_BLIND.iter().find(|(a, _)| *a == attr).copied()
            })?;
            Some((policy.id().to_string(), what))
        })
    }

    /// Whether policies read what a ClientHello can tell: then a connect waits for the
    /// client's first bytes before it is decided.
    pub fn reads_hello(&self) -> ReadsHello {
        let reads = |attr: &str| {
            self.set.policies().any(|policy| {
                policy
                    .to_json()
                    .is_ok_and(|json| first_read(&json, &|a| (a == attr).then_some(())).is_some())
            })
        };
        ReadsHello {
            sni: reads("sni"),
            hostname: reads("hostname"),
        }
    }
}

/// What a connect decision may read from the client's ClientHello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadsHello {
    /// A policy reads `context.sni`.
    pub sni: bool,
    /// A policy reads `resource.hostname`, which the ClientHello's name fills where
    /// DNS did not.
    pub hostname: bool,
}

/// The first attribute an EST expression reads (`.` or `has`) that `wanted` maps to
/// something.
fn first_read<T>(value: &Value, wanted: &dyn Fn(&str) -> Option<T>) -> Option<T> {
    match value {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(Value::Object(access)) = map.get(op)
                    && let Some(Value::String(attr)) = access.get("attr")
                    && let Some(found) = wanted(attr)
                {
                    return Some(found);
                }
            }
            map.values().find_map(|v| first_read(v, wanted))
        }
        Value::Array(items) => items.iter().find_map(|v| first_read(v, wanted)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::{Source, load};

    fn bundle(text: &str) -> crate::PolicyBundle {
        load(&[Source {
            name: "t.cedar".to_owned(),
            text: text.to_owned(),
        }])
        .unwrap()
    }

    #[test]
    fn exe_and_hostname_are_kernel_blind_and_comm_is_not() {
        let comm = bundle(
            r#"permit(principal, action == Action::"connect", resource)
               when { principal.process.comm == "curl" && principal.process.uid == 0 && resource.port == 80 };"#,
        );
        assert_eq!(comm.kernel_blind_read(), None);
        let exe = bundle(
            r#"permit(principal, action == Action::"connect", resource)
               when { principal.process.exe like "/usr/bin/*" };"#,
        );
        assert_eq!(
            exe.kernel_blind_read().map(|(_, what)| what),
            Some("principal.process.exe")
        );
        let host = bundle(
            r#"forbid(principal, action, resource) when { resource has hostname && resource.hostname == "x" };"#,
        );
        assert_eq!(
            host.kernel_blind_read().map(|(_, what)| what),
            Some("resource.hostname")
        );
        assert_eq!(
            host.reads_hello(),
            super::ReadsHello {
                sni: false,
                hostname: true
            }
        );
        let sni = bundle(
            r#"permit(principal, action == Action::"connect", resource)
               when { context has sni && context.sni like "*.example.com" };"#,
        );
        assert_eq!(
            sni.kernel_blind_read().map(|(_, what)| what),
            Some("context.sni")
        );
        assert!(sni.reads_hello().sni);
        assert_eq!(comm.reads_hello(), super::ReadsHello::default());
        assert_eq!(exe.reads_hello(), super::ReadsHello::default());
    }
}
