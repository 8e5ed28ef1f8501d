//! Issue 6: live reload, admin API, metrics, host/SNI routing.

#[allow(unused_imports)]
use crate::common::*;
