//! `decision:`: what the decision service (`authorizer.rs`, on `server.decision_listen`)
//! adds to an "allow" besides the identity headers. Compiles to
//! [`crate::runtime::DecisionSettings`], read per request.

use super::validate::Problems;
use super::yaml::section;
use crate::runtime::DecisionSettings;

section! {
    /// `decision:`
    pub struct DecisionModel {
        /// Also answer with the route's upstream credentials (`upstreams[].auth`: Basic,
        /// or a client-credentials token tollgate fetched and caches) as `Authorization`,
        /// for the ingress to send upstream instead of the client's token. Off by
        /// default: the answer then carries a secret to the ingress.
        "upstream_credentials" => pub upstream_credentials: Option<bool>,
    }
}

/// The settings; a `decision:` block without `server.decision_listen` is an error.
pub fn compile(m: Option<&DecisionModel>, listening: bool, p: &mut Problems) -> DecisionSettings {
    let Some(m) = m else {
        return DecisionSettings::default();
    };
    if !listening {
        p.add(
            "decision",
            "decision: configures the decision service, which needs server.decision_listen",
        );
    }
    DecisionSettings {
        upstream_credentials: m.upstream_credentials.unwrap_or(false),
    }
}
