//! Fault injection: misbehaving upstreams and identity providers.
