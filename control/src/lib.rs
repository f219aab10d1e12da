//! `whelm-control`: the control plane of Whelm Voice.
pub mod dsn;
pub mod jobs;
pub mod machine;
pub mod store;
