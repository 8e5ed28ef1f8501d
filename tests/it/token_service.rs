//! Issue 4: the token service and body credentials.

#[allow(unused_imports)]
use crate::common::*;
