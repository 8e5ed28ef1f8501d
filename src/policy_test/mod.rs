//! `tollgate test --config gateway.yaml cases.yaml`: policy tests. Each case is a
//! request (token, method, path, host, origin, headers) and the answer the policy must
//! give (status, reason code, error code, headers). The cases run through the same
//! policy layers as the server and `tollgate explain` ([`run`]), and the results are
//! printed as text or JUnit XML ([`report`]). Nothing is sent upstream.

pub mod cases;
pub mod report;
pub mod run;
