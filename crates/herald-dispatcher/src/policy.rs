//! Per-namespace settings: the part of a channel name before ':' selects them.

use herald_store::Retention;
use std::collections::HashMap;
use std::time::Duration;

/// Settings of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub retention: Retention,
    /// Only ephemeral messages may be published (reactions, counters, typing).
    pub ephemeral_only: bool,
    /// Largest `data`, in bytes of its JSON.
    pub max_payload: usize,
    /// Names of the API keys that may publish here; `None` means every key.
    pub publishers: Option<Vec<String>>,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            retention: Retention {
                max_count: 1000,
                max_age: Duration::from_secs(24 * 3600),
            },
            ephemeral_only: false,
            max_payload: 64 * 1024,
            publishers: None,
        }
    }
}

impl NamespacePolicy {
    /// Defaults for `user:` inboxes: long retention so offline users catch up.
    pub fn user_inbox() -> Self {
        Self {
            retention: Retention {
                max_count: 10_000,
                max_age: Duration::from_secs(30 * 24 * 3600),
            },
            ..Self::default()
        }
    }

    pub fn may_publish(&self, publisher: &str) -> bool {
        match &self.publishers {
            None => true,
            Some(names) => names.iter().any(|n| n == publisher),
        }
    }
}

/// All namespace settings, with the fallback for namespaces not configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policies {
    pub default: NamespacePolicy,
    pub namespaces: HashMap<String, NamespacePolicy>,
}

impl Default for Policies {
    fn default() -> Self {
        let mut namespaces = HashMap::new();
        namespaces.insert("user".to_owned(), NamespacePolicy::user_inbox());
        Self {
            default: NamespacePolicy::default(),
            namespaces,
        }
    }
}

impl Policies {
    pub fn for_channel(&self, channel: &str) -> &NamespacePolicy {
        self.namespaces
            .get(herald_proto::namespace_of(channel))
            .unwrap_or(&self.default)
    }

    /// Largest `max_payload` of any namespace: bounds request bodies before parsing.
    pub fn largest_payload(&self) -> usize {
        self.namespaces
            .values()
            .map(|p| p.max_payload)
            .chain(std::iter::once(self.default.max_payload))
            .max()
            .unwrap_or(self.default.max_payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_selects_policy() {
        let mut p = Policies::default();
        p.namespaces.insert(
            "react".into(),
            NamespacePolicy {
                ephemeral_only: true,
                ..NamespacePolicy::default()
            },
        );
        assert!(p.for_channel("react:42").ephemeral_only);
        assert!(!p.for_channel("live:42").ephemeral_only);
        assert!(!p.for_channel("plain").ephemeral_only);
        assert_eq!(p.for_channel("user:bob").retention.max_count, 10_000);
    }

    #[test]
    fn publisher_lists_restrict() {
        let p = NamespacePolicy {
            publishers: Some(vec!["billing".into()]),
            ..NamespacePolicy::default()
        };
        assert!(p.may_publish("billing"));
        assert!(!p.may_publish("chat"));
        assert!(NamespacePolicy::default().may_publish("anyone"));
    }
}
