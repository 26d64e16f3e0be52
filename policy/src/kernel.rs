//! Which decisions the kernel can enforce on its own: a connect decision is final at
//! connect time when it depends on nothing the kernel does not see there (the job's
//! cgroup, uid, gid, comm and the destination address and port). A policy that reads
//! `principal.process.exe` or `resource.hostname` needs the proxy for every connect.
use serde_json::Value;

use crate::load::PolicyBundle;

/// Attributes the kernel does not see at connect time.
const KERNEL_BLIND: [(&str, &str); 2] = [
    ("exe", "principal.process.exe"),
    ("hostname", "resource.hostname"),
];

impl PolicyBundle {
    /// The first policy that reads a fact the kernel cannot see at connect time, with
    /// what it reads, or `None` when every decision is final in the kernel.
    pub fn kernel_blind_read(&self) -> Option<(String, &'static str)> {
        self.set.policies().find_map(|policy| {
            let json = policy.to_json().ok()?;
            let read = reads(&json)?;
            Some((policy.id().to_string(), read))
        })
    }
}

/// The first kernel-blind attribute an EST expression reads (`.` or `has`).
fn reads(value: &Value) -> Option<&'static str> {
    match value {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(Value::Object(access)) = map.get(op)
                    && let Some(Value::String(attr)) = access.get("attr")
                    && let Some((_, what)) = KERNEL_BLIND.iter().find(|(a, _)| a == attr)
                {
                    return Some(what);
                }
            }
            map.values().find_map(reads)
        }
        Value::Array(items) => items.iter().find_map(reads),
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
    }
}
